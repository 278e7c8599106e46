"""Which residual channels carry the activation variance: per-channel moments of harvested vectors and the rule that
calls a few channels *dominant*.

On many models a handful of channels hold most of the variance ("massive activations"); FVU and MSE then mostly
measure them. The harvest sums, per cache shard, each channel's values and squares in float64
(:func:`channel_moments`, stored beside the shard, so a resumed harvest keeps them), and records the dominant channels
of the whole cache in its manifest (:func:`variance_summary`); the evaluation's robust measures
(:mod:`chatsae.eval.robust`) use the same rule (:func:`dominant_channels`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

DOMINANT_SHARE = 0.2
"""A channel with more than this share of the variance about the mean is dominant."""
DOMINANT_TOP_SHARE = 0.5
"""The top channels whose shares together exceed this are dominant too, when they are few (:data:`DOMINANT_TOP_MAX`
and at most 1/8 of the channels)."""
DOMINANT_TOP_MAX = 8
MOMENT_ROWS = 4096
"""Rows converted to float64 at a time by :func:`channel_moments`."""


def dominant_channels(
    variance: Tensor,
    share: float = DOMINANT_SHARE,
    top_share: float = DOMINANT_TOP_SHARE,
    top_max: int = DOMINANT_TOP_MAX,
) -> list[tuple[int, float]]:
    """``[(channel, share of the total variance)]``, largest first: channels above ``share``, and the smallest set of
    top channels whose shares sum above ``top_share`` when it has at most ``min(top_max, H // 8)`` channels (at least
    1). Empty when the variance is 0."""
    v = variance.double().cpu()
    total = float(v.sum())
    if not total > 0:
        return []
    shares = v / total
    order = torch.argsort(shares, descending=True)
    cum = shares[order].cumsum(0)
    k = min(int((cum <= top_share).sum()) + 1, v.numel())
    chosen = {int(i) for i in order[:k]} if k <= max(1, min(top_max, v.numel() // 8)) else set()
    chosen |= {int(i) for i in torch.nonzero(shares > share).flatten()}
    return sorted(((c, float(shares[c])) for c in chosen), key=lambda t: -t[1])


def channel_moments(acts: np.ndarray | Tensor) -> np.ndarray:
    """``[2, H]`` float64: each channel's sum and sum of squares over the rows of ``acts`` ``[n, H]`` (in float64,
    :data:`MOMENT_ROWS` rows at a time; deterministic)."""
    x = acts.detach().float().cpu().numpy() if isinstance(acts, Tensor) else acts
    out = np.zeros((2, x.shape[1]), dtype=np.float64)
    for a in range(0, x.shape[0], MOMENT_ROWS):
        chunk = x[a : a + MOMENT_ROWS].astype(np.float64)
        out[0] += chunk.sum(axis=0)
        out[1] += np.einsum("ij,ij->j", chunk, chunk)
    return out


def moments_variance(moments: np.ndarray, n: int) -> Tensor:
    """``[H]`` float64 sum over ``n`` rows of each channel's squared deviation about its mean, from the
    :func:`channel_moments` of those rows (``Σx² - (Σx)²/n``, at least 0)."""
    s, ss = moments[0], moments[1]
    return torch.from_numpy(np.maximum(ss - s * s / max(n, 1), 0.0))


def variance_summary(moments: np.ndarray, n: int) -> dict[str, Any]:
    """What a manifest records of the channel variance of ``n`` vectors: ``tokens``, ``mean_variance`` (the summed
    channel variances per vector), ``dominant_channels`` (``[[channel, share], ...]``, largest first, maybe empty)
    and ``dominant_share`` (their total share)."""
    var = moments_variance(moments, n)
    dom = dominant_channels(var)
    return {
        "tokens": n,
        "mean_variance": float(var.sum()) / max(n, 1),
        "dominant_channels": [[c, s] for c, s in dom],
        "dominant_share": sum(s for _, s in dom),
    }


def dominance_note(summary: dict[str, Any] | None, where: str) -> str | None:
    """One line saying which channels dominate the activation variance at ``where`` (a hook), from a
    :func:`variance_summary`; None when none does (or nothing was recorded)."""
    dom = (summary or {}).get("dominant_channels") or []
    if not dom:
        return None
    listed = ", ".join(f"{int(c)} ({100 * s:.0f}%)" for c, s in dom)
    total = 100 * sum(s for _, s in dom)
    return (
        f"channels {listed} hold {total:.0f}% of the activation variance at {where}: FVU and MSE will mostly measure "
        "them; see the robust measures (docs/metrics.md)"
    )
