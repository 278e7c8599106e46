"""On-disk activation cache: sharded, memory-mapped, with a manifest; written atomically and resumable.

Layout of a cache directory::

    manifest.json              model, hook, method, dtype, d_in, token count, shard list, progress, complete flag
    shard_00000.acts.npy       [n, d_in] activations (float32 / float16), memory-mapped when read
    shard_00000.meta.npz       token_ids, special_mask, token_class, positions, sample_ids  ([n] each)
    shard_00000.moments.npy    [2, d_in] float64: each channel's sum and sum of squares over the shard's vectors

A shard is written to temporary files and renamed into place, then the manifest is rewritten atomically; a crash
loses at most the shard being written, and ``harvest(..., resume=True)`` continues after the last complete shard.
The manifest keeps a blake2b digest of every shard file, checked the first time a process opens the shard; shard
names must be plain file names inside the cache directory. The directory carries chatsae's marker (``.chatsae``).
When the harvest finishes, the channels that dominate the activation variance (summed from the shards' moments,
:mod:`chatsae.activations.variance`) go into the manifest (``info["channel_variance"]``; a cache whose shards lack
moments, from an older harvest, has none).
Reading (:class:`CacheSource`) streams row indices through the mixing buffer and gathers vectors from the
memory-mapped shards, so memory does not grow with the cache size.
The manifest and the directory checks are in :mod:`chatsae.activations.cache_manifest`, the writer in
:mod:`chatsae.activations.cache_writer` (both importable from here); this module reads.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.utils import check_inside, file_digest
from .buffer import MixingBuffer
from .cache_manifest import (
    CONTENT_OPTIONS,
    IDENTITY_KEYS,
    MANIFEST,
    META_KEYS,
    Manifest,
    check_cache_dir,
    check_same_harvest,
    finished_cache,
)
from .cache_writer import CacheWriter, record_channel_variance
from .source import ActivationBatch

__all__ = [
    "CONTENT_OPTIONS",
    "IDENTITY_KEYS",
    "MANIFEST",
    "META_KEYS",
    "ActivationCache",
    "CacheSource",
    "CacheWriter",
    "Manifest",
    "check_cache_dir",
    "check_same_harvest",
    "finished_cache",
    "record_channel_variance",
]


_VERIFIED: set[tuple[str, int, int, str]] = set()
"""Shard files (path, size, mtime, digest) this process has verified: each is hashed once, not once per reader."""


class ActivationCache:
    """Read access to a complete cache: memory-mapped shards and row gathering by global index."""

    def __init__(self, directory: str | Path, allow_incomplete: bool = False, verify: bool = True) -> None:
        self.dir = Path(directory)
        self.verify = verify
        """Check each shard file against its digest in the manifest the first time this process opens it."""
        self.manifest = Manifest.read(self.dir)
        if not self.manifest.complete and not allow_incomplete:
            raise ValueError(f"{self.dir}: the harvest did not finish; run `chatsae harvest --resume` first")
        if not self.manifest.shards:
            raise ValueError(f"{self.dir}: the cache holds no activations")
        self.sizes = np.array([s["n"] for s in self.manifest.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self._acts: dict[int, np.ndarray] = {}
        self._meta: dict[int, dict[str, np.ndarray]] = {}

    @property
    def d_in(self) -> int:
        return self.manifest.d_in

    def where(self) -> str:
        """The file that says what this cache holds (named in errors about its width)."""
        return str(self.dir / MANIFEST)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if i not in self._acts:
            s = self.manifest.shards[i]
            for k in ("acts", "meta"):
                self._verify(self.dir / s[k], s.get(f"{k}_blake2b"))
            f = self.dir / s["acts"]
            try:
                self._acts[i] = np.load(f, mmap_mode="r")
                f = self.dir / s["meta"]
                with np.load(f) as z:
                    self._meta[i] = {k: z[k] for k in z.files}
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                self._acts.pop(i, None)
                raise ValueError(f"{f}: unreadable shard ({e})") from e
            shape = tuple(self._acts[i].shape)
            if len(shape) != 2 or shape[1] != self.d_in:
                self._acts.pop(i, None)
                width = shape[1] if len(shape) == 2 else f"shape {shape}"
                raise ValueError(
                    f"{self.dir / MANIFEST}: d_in mismatch: the manifest says d_in {self.d_in}, its shard "
                    f"{s['acts']} holds vectors of width {width}; the manifest does not belong to these shards"
                )
            if shape[0] != s["n"]:
                self._acts.pop(i, None)
                raise ValueError(f"{self.dir / s['acts']}: {shape[0]} rows, {MANIFEST} says {s['n']} rows")
        return self._acts[i], self._meta[i]

    def _verify(self, path: Path, digest: str | None) -> None:
        check_inside(self.dir, path, f"{self.dir / MANIFEST} shard")
        if not self.verify or digest is None or not path.is_file():
            return  # an older manifest without digests; a missing file is reported by the reader
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, digest)
        if key in _VERIFIED:
            return
        if file_digest(path) != digest:
            raise ValueError(
                f"{path}: checksum mismatch with {MANIFEST} (the shard's bytes changed since it was "
                "written: a corrupt or edited file); harvest again into a new directory"
            )
        _VERIFIED.add(key)

    def gather(self, index: Tensor) -> ActivationBatch:
        """Rows at global indices ``index`` ``[B]`` (any order) as an :class:`ActivationBatch`."""
        idx = index.numpy()
        shard_of = np.searchsorted(self.starts, idx, side="right") - 1
        acts = np.empty((len(idx), self.d_in), dtype=np.float32)
        meta: dict[str, np.ndarray] = {}
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            local = idx[sel] - self.starts[s]
            order = np.argsort(local)
            a, m = self._shard(int(s))
            rows = a[local[order]]
            if self.manifest.dtype == "bfloat16":
                rows = torch.from_numpy(np.ascontiguousarray(rows)).view(torch.bfloat16).float().numpy()
            acts[sel[order]] = rows
            for k, v in m.items():
                meta.setdefault(k, np.empty(len(idx), dtype=v.dtype))[sel] = v[local]
        extra = {
            k: torch.from_numpy(meta[k]) for k in ("token_ids", "special_mask", "positions", "sample_ids") if k in meta
        }
        return ActivationBatch(torch.from_numpy(acts), **extra, rows=index)

    def describe_row(self, row: int) -> str:
        """Where global row ``row`` is (``SHARD_FILE, row N`` within the shard)."""
        s = int(np.searchsorted(self.starts, row, side="right") - 1)
        return f"{self.dir / self.manifest.shards[s]['acts']}, row {row - int(self.starts[s])}"

    def read_all(self, key: str) -> Tensor:
        """Concatenate one metadata column over all shards ``[N]`` (small: one value per token)."""
        return torch.from_numpy(np.concatenate([self._shard(i)[1][key] for i in range(len(self.sizes))]))


class CacheSource:
    """Training batches from a cache: shard order shuffled per epoch, rows mixed in a buffer; endless and resumable.

    With ``world_size > 1`` this reader takes a disjoint share of the shards (round robin; at least one shard each).
    The environment's ``RANK``/``WORLD_SIZE`` are not consulted: data-parallel training reads the same global stream
    on every rank and slices each batch (chatsae.train.distributed).
    """

    def __init__(
        self,
        directory: str | Path,
        batch_size: int,
        buffer_tokens: int = 65_536,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.cache = ActivationCache(directory)
        self.d_in = self.cache.d_in
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        if not 0 <= rank < world_size <= len(self.cache.sizes):
            raise ValueError(
                f"{self.cache.dir}: cannot split {len(self.cache.sizes)} shard(s) over {world_size} "
                f"readers (rank {rank}); each reader needs at least one shard"
            )
        self.buffer = MixingBuffer(max(buffer_tokens, 2 * batch_size), batch_size, seed=seed)
        self.epoch, self.shard_pos = 0, 0
        self.chunk_rows = 4096

    def _my_shards(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.cache.sizes), generator=g).tolist()
        return order[self.rank :: self.world_size]

    def _chunks(self) -> Iterator[dict[str, Tensor]]:
        """Row indices of the shards in this epoch's order, in chunks; advances epochs forever."""
        while True:
            shards = self._my_shards()
            while self.shard_pos < len(shards):
                s = shards[self.shard_pos]
                self.shard_pos += 1
                start, end = int(self.cache.starts[s]), int(self.cache.starts[s + 1])
                yield {"index": torch.arange(start, end)}
            self.epoch, self.shard_pos = self.epoch + 1, 0

    def __iter__(self) -> Iterator[ActivationBatch]:
        for rows in self.buffer.batches(self._chunks()):
            yield self.cache.gather(rows["index"])

    def describe_row(self, row: int) -> str:
        return self.cache.describe_row(row)

    def where(self) -> str:
        return self.cache.where()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.shard_pos = int(state["epoch"]), int(state["shard_pos"])
        self.buffer.load_state_dict(state["buffer"])
