"""On-disk activation cache: sharded, memory-mapped, with a manifest; written atomically and resumable.

Layout of a cache directory::

    manifest.json              model, hook, method, dtype, d_in, token count, shard list, progress, complete flag
    shard_00000.acts.npy       [n, d_in] activations (float32 / float16), memory-mapped when read
    shard_00000.meta.npz       token_ids, special_mask, token_class, positions, sample_ids  ([n] each)

A shard is written to temporary files and renamed into place, then the manifest is rewritten atomically; a crash
loses at most the shard being written, and ``harvest(..., resume=True)`` continues after the last complete shard.
Reading (:class:`CacheSource`) streams row indices through the mixing buffer and gathers vectors from the
memory-mapped shards, so memory does not grow with the cache size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..utils import atomic_file
from .buffer import MixingBuffer
from .source import ActivationBatch

MANIFEST = "manifest.json"
META_KEYS = ("token_ids", "special_mask", "token_class", "positions", "sample_ids")


IDENTITY_KEYS = ("d_in", "model", "hook", "method", "dtype")
CONTENT_OPTIONS = ("exclude_first_position", "exclude_special", "exclude_bos")
"""Harvest options that change which vectors a cache holds (the others only batch the work)."""


@dataclass
class Manifest:
    """What a cache holds and how far its harvest got."""

    d_in: int
    dtype: str = "float32"
    model: str = ""
    hook: str = ""
    method: str = ""
    n_tokens: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    windows_done: int = 0
    """Harvest progress: data windows fully written (resume skips them)."""
    complete: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    """Anything else: data source, exclusions, padding share, model info..."""

    def content(self) -> dict[str, Any]:
        """What decides the cached vectors besides model, hook, method and dtype (as recorded in ``info``): data
        source and record count, held-out share, sequence settings of the method, token exclusions."""
        info, data, opts = self.info, self.info.get("data") or {}, self.info.get("options") or {}
        seq_keys = ("max_length",) if self.method == "fast" else ("context_size",)
        return {"data": data.get("data"), "format": data.get("format"), "records": data.get("records"),
                **{k: info.get(k) for k in ("holdout", "dedup_n", *seq_keys)},
                **{k: opts.get(k) for k in CONTENT_OPTIONS}}  # fmt: skip

    def differences(self, other: Manifest) -> list[str]:
        """``"field: ours -> theirs"`` for every identity or :meth:`content` field the two disagree on (a field
        missing from either, e.g. from an older manifest, is not compared)."""
        out = [f"{k}: {getattr(self, k)!r} -> {getattr(other, k)!r}" for k in IDENTITY_KEYS
               if getattr(self, k) != getattr(other, k)]  # fmt: skip
        mine, theirs = self.content(), other.content()
        return out + [f"{k}: {mine[k]!r} -> {theirs[k]!r}" for k in mine
                      if mine[k] is not None and theirs[k] is not None and mine[k] != theirs[k]]  # fmt: skip

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not an activation cache (no {MANIFEST})")
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as e:
            raise ValueError(f"{path}: corrupt manifest ({e})") from e

    def write(self, directory: str | Path) -> None:
        with atomic_file(Path(directory) / MANIFEST, "w") as fh:
            json.dump(asdict(self), fh, indent=2)  # type: ignore[arg-type]


class CacheWriter:
    """Append shards to a cache directory (creating it, or continuing an incomplete one)."""

    def __init__(self, directory: str | Path, manifest: Manifest) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = manifest
        self._remove_orphans()

    @classmethod
    def open(cls, directory: str | Path, manifest: Manifest, resume: bool) -> CacheWriter:
        """Start a new cache, or with ``resume`` continue an existing incomplete one with the same model/hook/method."""
        directory = Path(directory)
        if (directory / MANIFEST).is_file():
            old = Manifest.read(directory)
            diffs = old.differences(manifest)
            if not diffs and old.complete:
                return cls(directory, old)  # a finished harvest of the same model, hook, data and options: reuse it
            if not resume:
                raise FileExistsError(f"{directory}: an unfinished or different cache exists; use --resume to "
                                      "continue it, or another --out-dir / --cache-dir")  # fmt: skip
            if diffs:
                raise ValueError(f"{directory}: the existing cache was harvested with other settings (existing -> "
                                 f"wanted: {'; '.join(diffs)}); use another --out-dir / --cache-dir, or delete it")
            manifest = old
        return cls(directory, manifest)

    def _remove_orphans(self) -> None:
        known = {s["acts"] for s in self.manifest.shards} | {s["meta"] for s in self.manifest.shards}
        for p in self.dir.glob("shard_*"):
            if p.name not in known:
                p.unlink()

    def write_shard(self, acts: Tensor, meta: dict[str, Tensor], windows_done: int) -> None:
        """Write one shard (``acts`` ``[n, d_in]``, ``meta`` ``{key: [n]}``) and record progress atomically."""
        i = len(self.manifest.shards)
        acts_name, meta_name = f"shard_{i:05d}.acts.npy", f"shard_{i:05d}.meta.npz"
        np_dtype = np.float16 if self.manifest.dtype == "float16" else np.float32
        with atomic_file(self.dir / acts_name) as fh:
            np.save(fh, acts.detach().float().cpu().numpy().astype(np_dtype))
        with atomic_file(self.dir / meta_name) as fh:
            np.savez(fh, **{k: v.cpu().numpy() for k, v in meta.items()})
        n = int(acts.shape[0])
        self.manifest.shards.append({"acts": acts_name, "meta": meta_name, "n": n})
        self.manifest.n_tokens += n
        self.manifest.windows_done = windows_done
        self.manifest.write(self.dir)

    def finish(self, **info: Any) -> Manifest:
        self.manifest.complete = True
        self.manifest.info.update(info)
        self.manifest.write(self.dir)
        return self.manifest


class ActivationCache:
    """Read access to a complete cache: memory-mapped shards and row gathering by global index."""

    def __init__(self, directory: str | Path, allow_incomplete: bool = False) -> None:
        self.dir = Path(directory)
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

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if i not in self._acts:
            s = self.manifest.shards[i]
            try:
                self._acts[i] = np.load(self.dir / s["acts"], mmap_mode="r")
                with np.load(self.dir / s["meta"]) as z:
                    self._meta[i] = {k: z[k] for k in z.files}
            except (OSError, ValueError) as e:
                raise ValueError(f"{self.dir / s['acts']}: unreadable shard ({e})") from e
            if self._acts[i].shape != (s["n"], self.d_in):
                raise ValueError(f"{self.dir / s['acts']}: shape {self._acts[i].shape}, manifest says {s['n']} rows")
        return self._acts[i], self._meta[i]

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
            acts[sel[order]] = a[local[order]]
            for k, v in m.items():
                meta.setdefault(k, np.empty(len(idx), dtype=v.dtype))[sel] = v[local]
        extra = {k: torch.from_numpy(meta[k]) for k in ("token_ids", "special_mask", "positions", "sample_ids")
                 if k in meta}  # fmt: skip
        return ActivationBatch(torch.from_numpy(acts), **extra)

    def read_all(self, key: str) -> Tensor:
        """Concatenate one metadata column over all shards ``[N]`` (small: one value per token)."""
        return torch.from_numpy(np.concatenate([self._shard(i)[1][key] for i in range(len(self.sizes))]))


class CacheSource:
    """Training batches from a cache: shard order shuffled per epoch, rows mixed in a buffer; endless and resumable.

    With ``world_size > 1`` each rank reads a disjoint share of the shards (round robin).
    """

    def __init__(self, directory: str | Path, batch_size: int, buffer_tokens: int = 65_536, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None) -> None:  # fmt: skip
        self.cache = ActivationCache(directory)
        self.d_in = self.cache.d_in
        self.batch_size, self.seed = batch_size, seed
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
        self.buffer = MixingBuffer(max(buffer_tokens, 2 * batch_size), batch_size, seed=seed)
        self.epoch, self.shard_pos = 0, 0
        self.chunk_rows = 4096

    def _my_shards(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.cache.sizes), generator=g).tolist()
        return order[self.rank :: self.world_size] or order[:1]

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

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.shard_pos = int(state["epoch"]), int(state["shard_pos"])
        self.buffer.load_state_dict(state["buffer"])
