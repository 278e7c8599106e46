"""Data-dependent initialisation (the input scale for E||x||^2 = 1, the geometric median for b_dec) and the input
checks that keep garbage out of training: non-finite vectors stop the run, absurd outliers are dropped and counted.

An *absurd* vector has a norm above :data:`OUTLIER_FACTOR` x the median norm of the initialisation sample (the
attention sink at position 0, ~141x the median norm, is far below it). The input scale is the root mean squared norm
of the vectors that are not absurd: on ordinary data (no such vector) exactly ``sqrt(mean ||x||^2)`` as before.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any, NoReturn

import torch
from torch import Tensor

from ..activations.source import ActivationBatch, ActivationSource
from ..sae import SAE
from .config import TrainConfig
from .state import TrainState

OUTLIER_FACTOR = 1e3
"""A vector whose norm exceeds this many times the median norm of the initialisation sample is absurd (dropped)."""
MAX_OUTLIER_SHARE = 1e-3
"""The run stops when more than this share of the vectors (at least ``init_sample_tokens`` counted) are absurd."""
MAX_FVU = 2.0
"""A final FVU (train or held-out) above this is a failed run: the SAE reconstructs worse than the mean does."""


class BadInputError(ValueError):
    """The activations hold NaN/Inf, or too many absurd outliers; the message names where (file and row)."""


def outlier_limit(sq_norms: Tensor) -> float:
    """The squared-norm limit ``(OUTLIER_FACTOR x median norm)^2`` of ``[n]`` squared norms (inf if the median is 0,
    e.g. mostly-zero data: then nothing counts as absurd)."""
    med = sq_norms.double().median().item()
    return OUTLIER_FACTOR**2 * med if med > 0 else math.inf


def inlier_mask(x: Tensor) -> tuple[Tensor, float]:
    """``([n] bool: the row is not absurd, squared-norm limit)`` of the sample ``x`` ``[n, d_in]``; a non-finite row
    is a ValueError (the trainer names its file and row before calling this)."""
    sq = x.double().pow(2).sum(dim=-1)
    n_bad = int((~torch.isfinite(sq)).sum())
    if n_bad:
        raise ValueError(f"cannot normalise: the sample holds {n_bad} non-finite (NaN/Inf) vector(s)")
    limit = outlier_limit(sq)
    return sq < limit, limit


def input_scale(x: Tensor) -> float:
    """The constant C with ``E||x / C||^2 = 1`` over the rows of ``x`` ``[n, d_in]`` that are not absurd:
    ``C = sqrt(mean ||x||^2)`` (all rows on ordinary data)."""
    keep, _ = inlier_mask(x)
    c = math.sqrt(x.double().pow(2).sum(dim=-1)[keep].mean().item())
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"cannot normalise: mean squared norm of the sample is {c**2}")
    return c


def bad_rows(x: Tensor, limit: float) -> tuple[Tensor, Tensor] | None:
    """Check a batch ``x`` ``[B, d_in]`` against the squared-norm ``limit`` (same units): None when every row is
    fine (one norm reduction; on a CPU batch no device sync), else ``([B] non-finite, [B] finite but absurd)`` bool
    masks. A finite vector whose float32 norm overflows counts as absurd."""
    bad = ~(torch.linalg.vector_norm(x.float(), dim=-1) < math.sqrt(limit))  # NaN and inf compare False
    if not bool(bad.any()):
        return None
    nonfinite = ~torch.isfinite(x).all(dim=-1)
    return nonfinite, bad & ~nonfinite


def row_origin(source: Any, step: int, batch: ActivationBatch, i: int) -> str:
    """Where row ``i`` of ``batch`` (read by ``source`` for step ``step + 1``) came from: file and row when the
    source can say."""
    describe = getattr(source, "describe_row", None)
    if batch.rows is not None and describe is not None:
        return describe(int(batch.rows[i]))
    return f"row {i} of the batch of step {step + 1}"


def raise_nonfinite(source: Any, step: int, batch: ActivationBatch, nonfinite: Tensor, what: str) -> NoReturn:
    """:class:`BadInputError` naming the first row of ``batch`` set in the ``[B]`` mask ``nonfinite``."""
    raise BadInputError(
        f"{row_origin(source, step, batch, int(nonfinite.nonzero()[0]))}: the input activations hold "
        f"NaN/Inf ({int(nonfinite.sum())} vector(s) in a batch of {what}); stopped before training "
        "on them: check the model dtype (fp16 overflow?) and the harvested data"
    )


def screen_batch(batch: ActivationBatch, state: TrainState, source: Any, min_count: int) -> tuple[Tensor, int]:
    """The raw vectors of ``batch`` (``[B', d_in]``) to train on and how many were dropped, checked before any step
    with one norm reduction: NaN/Inf stops the run (:class:`BadInputError` naming file and row); absurd vectors
    (norm > ``OUTLIER_FACTOR`` x the median) are dropped and reported, and the run stops when, with those already
    dropped (``state.outliers_dropped``), they exceed ``MAX_OUTLIER_SHARE`` of the data seen (at least
    ``min_count``)."""
    found = bad_rows(batch.acts, state.input_limit)
    if found is None:
        return batch.acts, 0
    nonfinite, absurd = found
    if nonfinite.any():
        raise_nonfinite(source, state.step, batch, nonfinite, f"step {state.step + 1}")
    n = int(absurd.sum())
    dropped = state.outliers_dropped + n
    where = row_origin(source, state.step, batch, int(absurd.nonzero()[0]))
    seen = state.tokens + dropped
    what = f"absurd activation vector(s) (norm > {OUTLIER_FACTOR:g}x the median norm), first at {where}"
    if dropped > MAX_OUTLIER_SHARE * max(seen, min_count):
        raise BadInputError(
            f"{where}: {dropped} of {seen:,} vectors are {what} — more than "
            f"{100 * MAX_OUTLIER_SHARE:g}%: the activations are broken"
        )
    print(
        f"WARNING: dropped {n} {what} at step {state.step + 1} ({dropped} dropped so far)",
        file=sys.stderr,
        flush=True,
    )
    return batch.acts[~absurd], n


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


@torch.no_grad()
def initialise_from_sample(sae: SAE, source: ActivationSource, cfg: TrainConfig) -> tuple[float, float]:
    """Estimate the input scale and b_dec (set in ``sae``) from the first ``cfg.init_sample_tokens`` of ``source``,
    then rewind it; returns ``(scale, input_limit)``. Draws no numbers from the global torch RNG (the SAE, the source
    and its mixing buffer have their own seeded generators), so SAEs trained in threads cannot disturb each other."""
    start = copy.deepcopy(source.state_dict())
    chunks, batches, n = [], [], 0
    for batch in source:
        found = bad_rows(batch.acts, math.inf)
        if found is not None and found[0].any():
            raise_nonfinite(source, 0, batch, found[0], "the initialisation sample")
        chunks.append(batch.acts.float())
        batches.append(batch)
        n += batch.acts.shape[0]
        if n >= cfg.init_sample_tokens:
            break
    source.load_state_dict(start)
    sample = torch.cat(chunks)[: cfg.init_sample_tokens]
    keep, input_limit = inlier_mask(sample)
    n_out = int((~keep).sum())
    if n_out > MAX_OUTLIER_SHARE * len(sample):
        i = int((~keep).nonzero()[0])
        for b in batches:  # the batch holding sample row i
            if i < b.acts.shape[0]:
                break
            i -= b.acts.shape[0]
        raise BadInputError(
            f"{row_origin(source, 0, b, i)}: {n_out} of the {len(sample):,} vectors of the "
            f"initialisation sample have a norm above {OUTLIER_FACTOR:g}x the median (more than "
            f"{100 * MAX_OUTLIER_SHARE:g}%): the activations are broken"
        )
    scale = input_scale(sample) if cfg.normalize_activations else 1.0
    sample = sample[keep] / scale
    device = sae.b_dec.device
    if cfg.b_dec_init == "geometric_median":
        sae.b_dec.copy_(geometric_median(sample).to(device))
    elif cfg.b_dec_init == "mean":
        sae.b_dec.copy_(sample.mean(dim=0).to(device))
    return scale, input_limit
