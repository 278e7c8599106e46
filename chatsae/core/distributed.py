"""The process group under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``
set by torchrun): setup from the environment, ranks and devices, and collectives that are no-ops in a single process.
Used by the harvest's sharding (``chatsae.activations.sharding``), data-parallel training
(``chatsae.train.distributed``) and the workflows; the design is in docs/scaling.md."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


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
    return 1 if _ALONE else group_world_size()


def group_world_size() -> int:
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
    if group_world_size() > 1 and str(name).strip().lower() in ("auto", "cuda") and torch.cuda.is_available():
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
