"""The training log: one step's metrics (:class:`StepMetrics`), their window on the host, means, progress-bar
fields. Shapes: a step's metrics are a ``[7]`` float32 tensor on the training device, in :class:`StepMetrics` order."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class StepMetrics(NamedTuple):
    """Metrics of one optimizer step (normalised units when normalisation is on). :meth:`Trainer.train_step` returns
    them as one ``[7]`` float32 tensor on the training device, in this field order (no host sync per step)."""

    loss: float
    mse: float
    fvu: float
    l0: float
    sparsity: float
    aux: float
    dead_frac: float


def host_rows(window: list[Tensor], step: int) -> list[list[float]]:
    """The window's step metrics on the host (one sync), the last of them for step ``step``; RuntimeError naming the
    step of a non-finite value."""
    rows = torch.stack(window).tolist() if window else []
    for i, r in enumerate(rows):
        if not all(math.isfinite(v) for v in r):
            at = step - len(rows) + i + 1
            raise RuntimeError(f"non-finite loss/metrics at step {at}: {StepMetrics(*r)}; lower --lr or check inputs")
    return rows


def mean_metrics(rows: list[list[float]]) -> dict[str, float]:
    """``{field: mean over rows}`` of :class:`StepMetrics` rows."""
    return {k: sum(r[i] for r in rows) / len(rows) for i, k in enumerate(StepMetrics._fields)}


def bar_fields(m: StepMetrics, tok_s: float) -> dict[str, str]:
    """The progress bar's fields for one step's metrics."""
    return {
        "tok/s": f"{tok_s:,.0f}",
        "loss": f"{m.loss:.4f}",
        "mse": f"{m.mse:.4f}",
        "fvu": f"{m.fvu:.3f}",
        "L0": f"{m.l0:.1f}",
        "dead": f"{100 * m.dead_frac:.1f}%",
    }
