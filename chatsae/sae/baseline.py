"""A random SAE of a trained SAE's shape: the floor of judge-free interpretability proxies (``chatsae proxies``).

:func:`random_sae` builds a BatchTopK SAE (saved, like a trained one, as a SAELens JumpReLU with one threshold) whose
weights are drawn from a fixed seed and never trained:

- decoder rows: He-uniform, scaled to unit norm (the architectures' own initialisation); encoder = decoder
  transposed, ``b_enc = 0``;
- ``b_dec``: the mean of the calibration activations, so each latent reads a random direction of the centred
  activation rather than the (large) mean of the residual stream, which would make every latent fire together;
- threshold theta: chosen on the calibration activations so that the mean number of latents with a pre-activation
  above it per token is ``target_l0`` (the L0 of the trained SAEs it is compared with).

The calibration activations should come from the trained SAEs' training data (e.g. their activation cache), never
from the records the proxies are measured on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import create_sae
from .base import SAEConfig
from .batchtopk import BatchTopKSAE

METADATA_KEPT = ("model_name", "hook_name", "context_size", "max_length", "exclude_first_position")
"""Provenance keys of the template SAE that still describe the random one (what ``chatsae features`` reads)."""


def threshold_for_l0(pre: Tensor, target_l0: float) -> float:
    """The threshold theta with ``mean over rows of #(pre > theta) == target_l0`` (to the nearest whole count over
    all rows): the ``round(target_l0 * rows) + 1``-th largest entry of ``pre`` ``[rows, d_sae]``."""
    rows, d_sae = pre.shape
    if not 0 < target_l0 < d_sae:
        raise ValueError(f"target L0 must be in (0, {d_sae}), got {target_l0}")
    keep = min(max(round(target_l0 * rows), 1), pre.numel() - 1)
    return float(pre.reshape(-1).float().topk(keep + 1).values[-1])


@torch.no_grad()
def random_sae(
    d_in: int,
    d_sae: int,
    calibration: Tensor,
    target_l0: float,
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
) -> BatchTopKSAE:
    """A random BatchTopK SAE (see the module docstring) with ``d_sae`` latents on ``d_in``-wide activations;
    ``calibration`` ``[rows, d_in]`` raw activations (position 0 left out), ``target_l0`` the mean active latents per
    token on them. The same arguments give the same SAE. ``metadata`` (e.g. the template SAE's) is kept for
    :data:`METADATA_KEPT` only, plus ``method = "random"`` and a ``random_baseline`` record of how it was made."""
    if calibration.ndim != 2 or calibration.shape[1] != d_in or calibration.shape[0] < 2:
        raise ValueError(f"calibration activations must be [rows >= 2, {d_in}], got {tuple(calibration.shape)}")
    meta = {k: v for k, v in (metadata or {}).items() if k in METADATA_KEPT}
    meta["method"] = "random"
    cfg = SAEConfig(architecture="batchtopk", d_in=d_in, d_sae=d_sae, k=max(round(target_l0), 1), metadata=meta)
    sae = create_sae(cfg, seed=seed)
    assert isinstance(sae, BatchTopKSAE)
    x = calibration.to(sae.W_enc.dtype)
    sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
    sae.W_enc.copy_(sae.W_dec.T)
    sae.b_enc.zero_()
    sae.b_dec.copy_(x.mean(0))
    theta = threshold_for_l0(sae.encoder_input(x) @ sae.W_enc, target_l0)
    sae.topk_threshold.fill_(max(theta, 0.0))
    l0 = float((sae.encode(x) > 0).sum(-1).double().mean())
    sae.cfg.metadata["random_baseline"] = {
        "seed": seed,
        "target_l0": target_l0,
        "calibration_rows": int(x.shape[0]),
        "calibration_l0": l0,
        "threshold": float(sae.topk_threshold),
    }
    sae.eval()
    return sae
