"""Data-parallel training under ``torchrun``: the process group from the environment, ranks and devices, the
token-balanced split of a harvest, and collectives that are no-ops in a single process.

Started as ``torchrun --nproc-per-node N -m chatsae train ...`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` set by torchrun). The design (docs/scaling.md):

- **Harvest**: every rank renders and tokenises the whole training split (cheap next to the model's forward passes),
  takes its token-balanced part of the sequences (:func:`partition_balanced`) and writes its own shard files
  (``shard_rRR_NNNNN``) and progress file (``manifest.rankRRofWW.json``) into the one cache; after a barrier rank 0
  writes the single ``manifest.json`` listing every rank's shards. Rank 0 holds the cache's lock for all of them.
- **Training**: every rank reads the same global stream (same seed, global ``--batch-size`` B) and steps on its
  contiguous slice ``[r*B/W, (r+1)*B/W)`` of each batch; gradients are averaged over the ranks, so a W-rank step equals
  the 1-rank step up to float reduction order. Firing counts, dead masks and logged metrics are reduced over the global
  batch; every rank starts from rank 0's weights. Each rank gathers its whole batch (a memory-mapped gather for a
  cache), so data reading is not divided by W: the trade-off for a data order that does not depend on W.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")
Batch = TypeVar("Batch", bound=tuple[Any, ...])


class _HasIds(Protocol):
    @property
    def input_ids(self) -> Sequence[int]: ...


Seq = TypeVar("Seq", bound=_HasIds)
RANK_MANIFEST = re.compile(r"manifest\.rank(\d+)of(\d+)\.json")


# ---- process group ---------------------------------------------------------------------------------------------
_ALONE: list[bool] = []
"""Non-empty inside :func:`alone`: this process acts as a world of one."""


def is_distributed() -> bool:
    """A process group of more than one process is initialised (and this process is not working :func:`alone`)."""
    return not _ALONE and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (from the process group, else env ``RANK``, else 0); 0 inside :func:`alone`."""
    if _ALONE:
        return 0
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes (from the process group, else env ``WORLD_SIZE``, else 1); 1 inside :func:`alone`."""
    return 1 if _ALONE else _launched_world()


def _launched_world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def global_rank() -> int:
    """This process's rank in the launched world, even inside :func:`alone`."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """In the block this process works as a world of one (rank 0 of 1, collectives are no-ops), keeping its own
    device (``cuda:LOCAL_RANK``): how ``--distribute-saes`` trains different SAEs on different ranks."""
    _ALONE.append(True)
    try:
        yield
    finally:
        _ALONE.pop()


def local_rank() -> int:
    """Rank on this node (env ``LOCAL_RANK``, set by torchrun), which picks the GPU."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup(timeout_s: float = 1800.0) -> bool:
    """Initialise the process group from the environment when ``WORLD_SIZE`` > 1 and none is up yet (gloo for CPU
    tensors, plus nccl for CUDA tensors when CUDA is available; each rank's GPU is ``cuda:LOCAL_RANK``). Returns
    whether this call initialised it."""
    if _ALONE or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        if key not in os.environ:
            raise ValueError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {key} is not set: start several processes "
                "with torchrun (docs/scaling.md), or unset WORLD_SIZE"
            )
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session() -> Iterator[None]:
    """The process group for the block: set up from the environment if needed, destroyed after if this opened it
    (after a barrier when the block ended normally, so that no rank closes its connections while another is still
    in a collective; at once after an error, which must not wait for ranks that may never arrive)."""
    opened = setup()
    try:
        yield
        if opened:
            barrier()
    finally:
        if opened:
            teardown()


def device_name(name: str) -> str:
    """``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` in a multi-process run with CUDA (one GPU per rank); else ``name``."""
    if _launched_world() > 1 and str(name).strip().lower() in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank() % torch.cuda.device_count()}"
    return name


# ---- collectives (no-ops in one process) -----------------------------------------------------------------------
def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (picklable)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over the ranks, in place (``t`` itself in one process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def from_rank0(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result, or raises the exception it raised."""
    if not is_distributed():
        return fn()
    res: tuple[bool, Any] = (True, None)
    if rank() == 0:
        try:
            res = (True, fn())
        except Exception as e:  # noqa: BLE001 -- handed to every rank, then raised
            res = (False, e)
    ok, value = broadcast_object(res)
    if not ok:
        raise value
    return value


@contextlib.contextmanager
def main_lock(acquire: Callable[[], contextlib.AbstractContextManager[Any]]) -> Iterator[None]:
    """Hold ``acquire()`` (e.g. claim and lock an output directory) for the block on rank 0 only, so the ranks of one
    run do not refuse each other while other processes are still refused; rank 0's error is raised on every rank."""
    held: list[contextlib.AbstractContextManager[Any]] = []

    def enter() -> None:
        cm = acquire()
        cm.__enter__()
        held.append(cm)

    from_rank0(enter)
    try:
        yield
    finally:
        for cm in held:
            cm.__exit__(None, None, None)


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank."""
    if is_distributed():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=src)


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


# ---- the harvest -----------------------------------------------------------------------------------------------
def partition_balanced(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Split items of the given lengths into ``parts`` groups of nearly equal total length: longest first, each to
    the group with the least total so far (ties: lowest group, then lowest index). Deterministic; every index is in
    exactly one group; each group lists its indices in increasing order. The totals differ by at most the longest
    item."""
    totals = [0] * parts
    groups: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        g = min(range(parts), key=lambda g: (totals[g], g))
        groups[g].append(i)
        totals[g] += lengths[i]
    return [sorted(g) for g in groups]


def shard_sequences(sequences: Iterable[Seq]) -> list[Seq] | Iterable[Seq]:
    """This rank's token-balanced part of ``sequences`` (each with ``input_ids``), in their order; all of them in
    one process (returned as is)."""
    w = world_size()
    if w == 1:
        return sequences
    seqs = list(sequences)
    mine = partition_balanced([len(s.input_ids) for s in seqs], w)[rank()]
    return [seqs[i] for i in mine]


def rank_manifest_name(r: int, w: int) -> str:
    return f"manifest.rank{r:02d}of{w:02d}.json"


def check_harvest_world(directory: Path, max_tokens: int | None) -> None:
    """A cache harvested (or being harvested) by another number of processes is used only when complete and big
    enough; resuming or extending it needs the same number (ValueError saying so)."""
    from ..activations.cache import MANIFEST, Manifest

    w = world_size()
    how = "with torchrun --nproc-per-node {0} (or as many processes in all)"
    if (directory / MANIFEST).is_file():
        old = Manifest.read(directory)
        theirs = int(old.info.get("world_size", 1))
        if theirs != w and not (old.complete and old.shortfall(max_tokens) is None):
            state = "is not finished" if not old.complete else "holds fewer vectors than this run asks for"
            raise ValueError(
                f"{directory}: the activation cache was harvested by {theirs} process(es) and {state}; "
                f"resume or extend it {how.format(theirs)}, or use another --out-dir / --cache-dir"
            )
        return
    worlds = {int(m[2]) for p in directory.glob("manifest.rank*.json") if (m := RANK_MANIFEST.fullmatch(p.name))}
    if worlds - {w}:
        theirs = min(worlds - {w})
        raise ValueError(
            f"{directory}: an interrupted harvest by {theirs} processes is here; resume it "
            f"{how.format(theirs)}, or use another --out-dir / --cache-dir"
        )


def _existing_cache(directory: Path, manifest: Any, max_tokens: int | None) -> Any:
    """The complete cache of the same harvest at ``directory`` to reuse, or None after making it ready for the
    ranks' harvest (an unfinished or too small cache of this world size is marked unfinished)."""
    from ..activations.cache import MANIFEST, Manifest
    from ..core.locking import mark_dir

    mark_dir(directory, "cache")
    check_harvest_world(directory, max_tokens)
    if not (directory / MANIFEST).is_file():
        return None
    old = Manifest.read(directory)
    diffs = old.differences(manifest)
    if diffs:
        raise ValueError(
            f"{directory}: the existing cache was harvested with other settings (existing -> "
            f"wanted: {'; '.join(diffs)}); use another --out-dir / --cache-dir, or delete it"
        )
    if old.complete and old.shortfall(max_tokens) is None:
        return old
    old.complete = False  # extended by the ranks: not a finished cache until they are all done
    old.write(directory)
    return None


def harvest_ranks(
    caches: Mapping[Any, tuple[str | Path, Any]],
    max_tokens: int | None,
    resume: bool,
    run: Callable[[dict[Any, Any], int | None], tuple[dict[Any, Any], Any]],
) -> tuple[dict[Any, Any], Any]:
    """Harvest under several processes, into one cache per key of ``caches`` (``{key: (directory, manifest)}``):
    ``run(writers, budget)`` harvests this rank's sequences into its own shards (``{key: CacheWriter}``, budget
    ``ceil(max_tokens / W)`` vectors) and returns ``(manifests, stats)``; then rank 0 writes each ``manifest.json``
    listing all ranks' shards. Complete caches of the same harvest (any world size) are reused. Rank 0 holds the
    directories' locks throughout. Returns ``({key: merged manifest}, stats summed over the ranks)`` (stats None
    when every cache was reused)."""
    from ..activations.cache import CacheWriter, Manifest
    from ..core.locking import DirLock

    setup()  # `chatsae harvest` under torchrun: the process group from the environment
    r, w = rank(), world_size()
    budget = None if max_tokens is None else math.ceil(max_tokens / w)
    dirs = {k: Path(d) for k, (d, _) in caches.items()}

    def lock_all() -> contextlib.ExitStack:
        with contextlib.ExitStack() as stack:
            for d in dirs.values():
                stack.enter_context(DirLock(d, "a harvest"))
            return stack.pop_all()

    with main_lock(lock_all):
        found = from_rank0(lambda: {k: _existing_cache(dirs[k], m, max_tokens) for k, (_, m) in caches.items()})
        todo = [k for k, m in found.items() if m is None]
        if not todo:
            return found, None
        writers = {}
        for k in todo:
            part = dataclasses.replace(caches[k][1], shards=[], info={**caches[k][1].info, "max_tokens": budget})
            writers[k] = CacheWriter.open(
                dirs[k], part, resume, name=rank_manifest_name(r, w), prefix=f"shard_r{r:02d}_"
            )
        _, stats = run(writers, budget)
        totals = all_gather_objects(dict(vars(stats)))
        for key in vars(stats):
            setattr(stats, key, max(t[key] for t in totals) if key == "seconds" else sum(t[key] for t in totals))

        def merge() -> dict[Any, Any]:
            for k in todo:
                parts = [Manifest.read(dirs[k], rank_manifest_name(i, w)) for i in range(w)]
                manifest = caches[k][1]
                merged = dataclasses.replace(
                    manifest,
                    shards=[s for p in parts for s in p.shards],
                    n_tokens=sum(p.n_tokens for p in parts),
                    complete=True,
                )
                merged.info = {
                    **manifest.info,
                    "max_tokens": max_tokens,
                    "world_size": w,
                    "exhausted": all(p.info.get("exhausted") is not False for p in parts),
                    "rank_tokens": [p.n_tokens for p in parts],
                    "harvest": stats.as_dict(),
                }
                merged.write(dirs[k])
                found[k] = merged
            return found

        barrier()  # every rank's shards are written
        return from_rank0(merge), stats
