"""Data-dependent initialisation: the input scale for E||x||^2 = 1 and the geometric median for b_dec."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def input_scale(x: Tensor) -> float:
    """The constant C with ``E||x / C||^2 = 1`` on the sample ``x`` ``[n, d_in]``: ``C = sqrt(mean ||x||^2)``."""
    c = math.sqrt(x.double().pow(2).sum(dim=-1).mean().item())
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"cannot normalise: mean squared norm of the sample is {c**2}")
    return c


@torch.no_grad()
def geometric_median(x: Tensor, max_iter: int = 100, tol: float = 1e-7, eps: float = 1e-8) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the rows of ``x`` ``[n, d]``.

    Iterates ``y <- sum_i w_i x_i / sum_i w_i`` with ``w_i = 1 / max(||x_i - y||, eps)`` from the mean, until the
    relative change of the objective falls below ``tol``. Returns ``[d]``.
    """
    x = x.double()
    y = x.mean(dim=0)
    prev = (x - y).norm(dim=1).sum()
    for _ in range(max_iter):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(eps)
        y = (w[:, None] * x).sum(dim=0) / w.sum()
        obj = (x - y).norm(dim=1).sum()
        if (prev - obj).abs() <= tol * prev:
            break
        prev = obj
    return y.float()
