"""The harvest under ``torchrun``: every rank renders and tokenises the whole training split (cheap next to the
model's forward passes), takes its token-balanced part of the sequences (:func:`partition_balanced`) and writes its
own shard files (``shard_rRR_NNNNN``) and progress file (``manifest.rankRRofWW.json``) into the one cache; after a
barrier rank 0 writes the single ``manifest.json`` listing every rank's shards. Rank 0 holds the cache's lock for all
of them."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..core.distributed import all_gather_objects, barrier, from_rank0, main_lock, rank, setup, world_size
from ..core.locking import DirLock, mark_dir
from .cache import MANIFEST, CacheWriter, Manifest, check_cache_dir, record_channel_variance


class HasIds(Protocol):
    @property
    def input_ids(self) -> Sequence[int]: ...


Seq = TypeVar("Seq", bound=HasIds)
RANK_MANIFEST = re.compile(r"manifest\.rank(\d+)of(\d+)\.json")


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


def existing_cache_for_ranks(directory: Path, manifest: Any, max_tokens: int | None) -> Any:
    """The complete cache of the same harvest at ``directory`` to reuse, or None after making it ready for the
    ranks' harvest (an unfinished or too small cache of this world size is marked unfinished)."""

    check_cache_dir(directory)
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
        found = from_rank0(
            lambda: {k: existing_cache_for_ranks(dirs[k], m, max_tokens) for k, (_, m) in caches.items()}
        )
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
                record_channel_variance(dirs[k], merged)  # every rank's shards, in the listed order
                merged.write(dirs[k])
                found[k] = merged
            return found

        barrier()  # every rank's shards are written
        return from_rank0(merge), stats
