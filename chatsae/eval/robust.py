"""Reconstruction measures that a few massive channels cannot hide behind, and the checks that say when FVU/MSE do.

On many models a handful of residual channels carry most of the activation variance ("massive activations": the
attention sink at position 0, delimiter tokens). FVU and MSE then measure those channels: an SAE that reconstructs
them and nothing else has a small FVU. Beside FVU the evaluation reports, per token subset:

- the **dominant channels** (:func:`dominant_channels`): every channel with more than 20% of the variance about the
  mean, and the top channels whose shares together exceed 50% when there are few of them, each with its share;
- **FVU without the dominant channels** (:func:`channel_fvu`) and the **per-channel standardised FVU** (the mean over
  channels of each channel's own FVU, :func:`standardized_fvu`): every channel weighs the same;
- the **median cosine similarity** of reconstructions (:func:`histogram_median` of :func:`cosine_histogram`);

and :func:`fidelity_warnings` says when FVU and these disagree.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

# the dominant-channel rule lives with the harvest, which records the dominant channels of every cache
from ..activations.variance import DOMINANT_SHARE as DOMINANT_SHARE
from ..activations.variance import DOMINANT_TOP_MAX as DOMINANT_TOP_MAX
from ..activations.variance import DOMINANT_TOP_SHARE as DOMINANT_TOP_SHARE
from ..activations.variance import dominant_channels

COSINE_BINS = 20000
"""Bins of the cosine histogram over [-1, 1] (width 1e-4: the median is exact to 5e-5)."""
LOW_FVU = 0.1
"""FVU below this looks good; the warnings check whether the robust measures agree."""
MIN_MEDIAN_COSINE = 0.9
FVU_RATIO = 3.0
"""FVU without the dominant channels (or standardised) more than this many times FVU: FVU is carried by them."""


ROBUST_FVUS = {"fvu_no_dominant": "FVU without the dominant channels", "fvu_standardized": "standardised FVU"}


def channel_variance(x: Tensor) -> Tensor:
    """``[H]`` sum over tokens of the squared deviation of each channel about its mean (float64)."""
    xd = x.double()
    return (xd - xd.mean(dim=0)).pow(2).sum(dim=0)


def channel_sse(x: Tensor, x_hat: Tensor) -> Tensor:
    """``[H]`` sum over tokens of each channel's squared reconstruction error (float64)."""
    return (x.double() - x_hat.double()).pow(2).sum(dim=0)


def channel_fvu(sse: Tensor, variance: Tensor, exclude: list[int] | tuple[int, ...] = ()) -> float:
    """FVU over the channels not in ``exclude``: ``Σ_k sse_k / Σ_k var_k`` (NaN without variance left)."""
    keep = torch.ones(variance.numel(), dtype=torch.bool)
    keep[list(exclude)] = False
    den = float(variance.double().cpu()[keep].sum())
    return float(sse.double().cpu()[keep].sum()) / den if den > 0 else float("nan")


def standardized_fvu(sse: Tensor, variance: Tensor) -> float:
    """Mean over channels with variance of ``sse_k / var_k``: the FVU of per-channel standardised activations."""
    s, v = sse.double().cpu(), variance.double().cpu()
    ok = v > 0
    return float((s[ok] / v[ok]).mean()) if bool(ok.any()) else float("nan")


def cosine_histogram(cos: Tensor, bins: int = COSINE_BINS) -> Tensor:
    """``[bins]`` counts of per-token cosines in equal bins of [-1, 1] (the last bin closed)."""
    idx = ((cos.double() + 1) / 2 * bins).floor().clamp(0, bins - 1).long()
    return torch.bincount(idx.flatten(), minlength=bins)


def histogram_median(counts: Tensor) -> float:
    """The lower median (the ``ceil(n/2)``-th smallest value) of :func:`cosine_histogram` counts, as its bin's
    centre; NaN when empty."""
    c = counts.cpu().long()
    n = int(c.sum())
    if n == 0:
        return float("nan")
    i = int(torch.searchsorted(c.cumsum(0), torch.tensor(math.ceil(n / 2))))
    return -1 + (i + 0.5) * 2 / c.numel()


def robust_result(sse: Tensor | None, variance: Tensor | None, cos_counts: Tensor | None) -> dict[str, Any]:
    """``cosine_median``, ``fvu_standardized``, ``fvu_no_dominant``, ``dominant_channels`` (``[[channel, share],
    ...]``) and ``dominant_share`` (their total share) of one subset; NaN / empty when it had no token."""
    if sse is None or variance is None or cos_counts is None:
        nan = float("nan")
        return {
            "cosine_median": nan,
            "fvu_standardized": nan,
            "fvu_no_dominant": nan,
            "dominant_channels": [],
            "dominant_share": nan,
        }
    dom = dominant_channels(variance)
    return {
        "cosine_median": histogram_median(cos_counts),
        "fvu_standardized": standardized_fvu(sse, variance),
        "fvu_no_dominant": channel_fvu(sse, variance, [c for c, _ in dom]) if dom else channel_fvu(sse, variance),
        "dominant_channels": [[c, s] for c, s in dom],
        "dominant_share": sum(s for _, s in dom),
    }


def fidelity_warnings(metrics: dict[str, Any], where: str = "") -> list[str]:
    """Sentences saying where FVU disagrees with the robust measures of one subset's ``metrics``: FVU below
    :data:`LOW_FVU` with a median cosine below :data:`MIN_MEDIAN_COSINE`, FVU without the dominant channels or the
    standardised FVU above :data:`FVU_RATIO` x FVU; and the dominant channels themselves."""
    out: list[str] = []
    fvu = metrics.get("fvu")
    if not isinstance(fvu, (int, float)) or math.isnan(fvu):
        return out
    at = f" ({where})" if where else ""
    cos = metrics.get("cosine_median")
    if fvu < LOW_FVU and isinstance(cos, (int, float)) and cos < MIN_MEDIAN_COSINE:
        out.append(f"FVU {fvu:.3g} looks good but the median cosine of reconstructions is {cos:.3g}{at}")
    for key, name in (
        ("fvu_no_dominant", "FVU without the dominant channels"),
        ("fvu_standardized", "standardised FVU"),
    ):
        v = metrics.get(key)
        if isinstance(v, (int, float)) and v > FVU_RATIO * fvu:
            out.append(f"{name} {v:.3g} is {v / max(fvu, 1e-300):.3g}x FVU {fvu:.3g}{at}")
    dom = metrics.get("dominant_channels") or []
    if dom:
        listed = ", ".join(f"{int(c)} ({100 * s:.0f}%)" for c, s in dom)
        out.append(f"channels dominating the activation variance{at}: {listed}")
    return out


def position0_norm_ratio(metrics: dict[str, dict[str, Any]]) -> float | None:
    """Mean squared norm at position 0 over that of every other token, measured from the ``all`` and
    ``all_no_pos0`` subsets (None without both)."""
    a, b = metrics.get("all") or {}, metrics.get("all_no_pos0") or {}
    n_all, n_rest = a.get("tokens") or 0, b.get("tokens") or 0
    msn_all, msn_rest = a.get("mean_sq_norm"), b.get("mean_sq_norm")
    if n_all <= n_rest or not n_rest or not isinstance(msn_all, (int, float)) or not isinstance(msn_rest, (int, float)):
        return None
    pos0 = (n_all * msn_all - n_rest * msn_rest) / (n_all - n_rest)
    return pos0 / msn_rest if msn_rest > 0 else None
