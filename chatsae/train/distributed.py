"""Data-parallel training under ``torchrun``: every rank reads the same global stream (same seed, global
``--batch-size`` B) and steps on its contiguous slice ``[r*B/W, (r+1)*B/W)`` of each batch; gradients are averaged
over the ranks, so a W-rank step equals the 1-rank step up to float reduction order. Firing counts, dead masks and
logged metrics are reduced over the global batch; every rank starts from rank 0's weights. Each rank gathers its
whole batch (a memory-mapped gather for a cache), so data reading is not divided by W: the trade-off for a data order
that does not depend on W. The process group itself: :mod:`chatsae.core.distributed`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from ..core.distributed import all_reduce_sum, is_distributed, rank, world_size

Batch = TypeVar("Batch", bound=tuple[Any, ...])


# ---- the global batch ------------------------------------------------------------------------------------------
def check_batch_size(batch_size: int) -> None:
    """ValueError unless the global batch divides evenly over the ranks."""
    w = world_size()
    if batch_size % w:
        raise ValueError(
            f"--batch-size {batch_size} (the global batch) does not divide over {w} processes "
            f"(WORLD_SIZE); use a multiple of {w}"
        )


def rank_rows(t: Tensor) -> Tensor:
    """This rank's contiguous slice ``[r*B/W, (r+1)*B/W)`` of a global batch ``t`` ``[B, ...]``."""
    w = world_size()
    if w == 1:
        return t
    if t.shape[0] % w:
        raise ValueError(f"a batch of {t.shape[0]} rows does not divide over {w} processes")
    n = t.shape[0] // w
    return t[rank() * n : (rank() + 1) * n]


def rank_batch(batch: Batch) -> Batch:
    """This rank's rows (:func:`rank_rows`) of every tensor field of a global batch (a NamedTuple such as
    ``ActivationBatch``); the batch itself in one process."""
    if world_size() == 1:
        return batch
    make: Callable[..., Batch] = type(batch)  # a NamedTuple class: takes the fields positionally
    return make(*(t if t is None else rank_rows(t) for t in batch))


def average_gradients(params: Iterable[torch.nn.Parameter], rows: int) -> None:
    """Replace each gradient (of a loss averaged over this rank's ``rows`` rows) by the gradient of the loss averaged
    over all ranks' rows: ``sum_r rows_r * g_r / sum_r rows_r`` (one flat all-reduce). Every rank must have gradients
    for the same parameters (true here: the graph depends only on state that is identical on all ranks)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) * rows for g in grads] + [torch.tensor([float(rows)], device=grads[0].device)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat[:-1] / flat[-1]
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


@torch.no_grad()
def global_batch(x: Tensor, x_hat: Tensor, fired: Tensor, means: Tensor) -> tuple[Tensor, int, Tensor, Tensor, Tensor]:
    """Step statistics over the global batch, each rank holding its rows: ``x``, ``x_hat`` ``[b, d_in]``, ``fired``
    ``[d_sae]`` (float: this rank's rows on which each latent fired) and ``means`` ``[k]`` (batch means of the loss
    terms). Returns per-latent firing counts ``[d_sae]`` (int64), the number of rows, the fraction of variance
    unexplained, the mean L0 and ``means`` averaged over all rows (0-d/``[k]`` tensors on the device; no host sync
    in one process)."""
    fired_per_latent = fired.float()  # exact: integers below 2**24 in float32
    counts = fired_per_latent.long()
    if not is_distributed():
        resid = (x - x_hat).pow(2).sum()
        total = (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        return counts, x.shape[0], resid / total, fired_per_latent.sum() / x.shape[0], means
    b, d, m, k = x.shape[0], x.shape[1], counts.shape[0], means.shape[0]
    parts = [
        x.double().sum(dim=0),
        counts.double(),
        means.double() * b,
        (x - x_hat).double().pow(2).sum()[None],
        counts.sum().double()[None],
        torch.tensor([float(b)], dtype=torch.float64, device=x.device),
    ]
    flat = all_reduce_sum(torch.cat(parts))
    n = flat[-1]
    mean = (flat[:d] / n).to(x.dtype)
    total = all_reduce_sum((x - mean).double().pow(2).sum()).clamp_min(1e-12)
    means = (flat[d + m : d + m + k] / n).to(means.dtype)
    resid, fired_total = flat[d + m + k], flat[d + m + k + 1]
    fvu, l0 = (resid / total).float(), (fired_total / n).float()
    return flat[d : d + m].round().to(counts.dtype), int(n.item()), fvu, l0, means
