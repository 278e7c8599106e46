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
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.constants import CACHE_MANIFEST_FILE
from ..core.locking import LOCK, MARKER, OutputDirError, is_chatsae_dir, mark_dir
from ..core.ownership import owns, read_marker
from ..core.utils import atomic_file, check_inside, file_digest, safe_name
from .buffer import MixingBuffer
from .source import ActivationBatch
from .variance import channel_moments, variance_summary

MANIFEST = CACHE_MANIFEST_FILE
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
        source and record count, the model's weights dtype, held-out share, sequence settings of the method, token
        exclusions."""
        info, data, opts = self.info, self.info.get("data") or {}, self.info.get("options") or {}
        seq_keys = ("max_length",) if self.method == "fast" else ("context_size",)
        return {
            "data": data.get("data"),
            "format": data.get("format"),
            "records": data.get("records"),
            "data_hash": data.get("data_hash"),
            "model_dtype": (info.get("model") or {}).get("dtype"),
            **{k: info.get(k) for k in ("holdout", "dedup_n", *seq_keys)},
            **{k: opts.get(k) for k in CONTENT_OPTIONS},
        }

    def differences(self, other: Manifest) -> list[str]:
        """``"field: ours -> theirs"`` for every identity or :meth:`content` field the two disagree on (a field
        missing from either, e.g. from an older manifest, is not compared)."""
        out = [
            f"{k}: {getattr(self, k)!r} -> {getattr(other, k)!r}"
            for k in IDENTITY_KEYS
            if getattr(self, k) != getattr(other, k)
        ]
        mine, theirs = self.content(), other.content()
        hints = {"data_hash": " (the data file's content changed)"}
        return out + [
            f"{k}: {mine[k]!r} -> {theirs[k]!r}{hints.get(k, '')}"
            for k in mine
            if mine[k] is not None and theirs[k] is not None and mine[k] != theirs[k]
        ]

    def shortfall(self, asked: int | None) -> str | None:
        """Why this complete cache has fewer vectors than ``asked`` (None = all the data), or None if it has enough.

        Uses ``info["max_tokens"]`` (the budget its harvest stopped at) and ``info["exhausted"]`` (the data ran out);
        an older manifest without them is not judged (None)."""
        if self.info.get("exhausted") is not False or (asked is not None and self.n_tokens >= asked):
            return None
        return (
            f"the cache holds {self.n_tokens:,} vectors, harvested with a budget of "
            f"{self.info.get('max_tokens') or 0:,} before the data ran out; this run asks for "
            f"{'all the data' if asked is None else f'{asked:,}'}"
        )

    def repeat_note(self, asked: int | None) -> str | None:
        """A plain warning when the data itself gives fewer vectors than ``asked`` (they are repeated), else None."""
        if asked is None or self.n_tokens >= asked or self.info.get("exhausted") is False:
            return None
        why = (
            ""
            if self.info.get("exhausted")
            else (
                " (an older cache that does not record whether its harvest used"
                " all the data; if not, harvest again into a new directory)"
            )
        )
        return (
            f"warning: cache holds {self.n_tokens:,} vectors, run asks for {asked:,}: they are repeated "
            f"{asked / max(self.n_tokens, 1):.1f} times{why}"
        )

    @classmethod
    def read(cls, directory: str | Path, name: str = MANIFEST) -> Manifest:
        path = Path(directory) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not an activation cache (no {name})")
        try:
            raw = json.loads(path.read_text())
            manifest = cls(**raw)
        except (json.JSONDecodeError, TypeError, RecursionError) as e:
            raise ValueError(f"{path}: corrupt manifest ({e})") from e
        for i, s in enumerate(manifest.shards):
            if not (
                isinstance(s, dict)
                and isinstance(s.get("n"), int)
                and s["n"] >= 0
                and all(isinstance(s.get(k), str) for k in ("acts", "meta"))
            ):
                raise ValueError(f"{path}: corrupt manifest (shard {i}: {str(s)[:120]})")
            for k in ("acts", "meta", "moments"):
                if k in s:  # moments: not in the shards of an older harvest
                    safe_name(str(s[k]), f"{path}: shard {i} {k} file")  # a plain file name inside the cache directory
        return manifest

    def write(self, directory: str | Path, name: str = MANIFEST) -> None:
        """Write the manifest into ``directory``, which must be chatsae's activation cache (its marker of kind
        ``cache``): a folder without it (e.g. a cache copied by hand) may be read, never written into."""
        directory = Path(directory)
        if str(read_marker(directory).get("kind", "")) != "cache":
            raise OutputDirError(
                f"{directory}: not a chatsae activation cache (no {MARKER} marker of kind 'cache'); chatsae reads "
                "such a folder but writes nothing into it"
            )
        with atomic_file(directory / name, "w") as fh:
            json.dump(asdict(self), fh, indent=2)


def check_cache_dir(directory: str | Path) -> None:
    """Refuse a non-empty directory that chatsae's marker does not name an activation cache (kind ``cache``): a
    user's folder holding a file named ``manifest.json`` is neither read nor extended."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise OutputDirError(f"{directory}: the activation cache directory is a file")
    if not directory.is_dir() or {p.name for p in directory.iterdir()} <= {LOCK}:
        return
    kind = read_marker(directory).get("kind") if is_chatsae_dir(directory) else None
    if kind == "cache":
        return
    if kind is not None:
        raise OutputDirError(
            f"{directory}: a chatsae {kind} directory, not an activation cache ({MARKER} says kind {kind!r}); "
            "choose another --out-dir / --cache-dir"
        )
    found = f"; its {MANIFEST} was not written by chatsae" if (directory / MANIFEST).exists() else ""
    raise OutputDirError(
        f"{directory}: a non-empty directory that is not a chatsae activation cache (no {MARKER} marker of kind "
        f"'cache'{found}); choose another --out-dir / --cache-dir"
    )


def check_same_harvest(directory: Path, old: Manifest, manifest: Manifest) -> None:
    """ValueError listing every difference between the cache's manifest and the harvest asked for."""
    diffs = old.differences(manifest)
    if diffs:
        raise ValueError(
            f"{directory}: the existing cache was harvested with other settings (existing -> "
            f"wanted: {'; '.join(diffs)}); use another --out-dir / --cache-dir, or delete it"
        )


def finished_cache(directory: str | Path, manifest: Manifest, max_tokens: int | None) -> Manifest | None:
    """The finished cache of the same harvest at ``directory`` holding the budget (or all the data), else None. It is
    read without the writer's lock (nothing writes a finished cache), so several processes can start from it at once
    (``--distribute-saes``). A cache of other settings is the ValueError of :meth:`CacheWriter.open`."""
    directory = Path(directory)
    check_cache_dir(directory)
    if not (directory / MANIFEST).is_file():
        return None
    old = Manifest.read(directory)
    check_same_harvest(directory, old, manifest)
    return old if old.complete and old.shortfall(max_tokens) is None else None


class CacheWriter:
    """Append shards to a cache directory (creating it, or continuing an incomplete one). Callers that may run
    concurrently hold a :class:`chatsae.locking.DirLock` on the directory (``harvest_to_cache`` does)."""

    def __init__(self, directory: str | Path, manifest: Manifest, name: str = MANIFEST, prefix: str = "shard_") -> None:
        self.dir = Path(directory)
        self.name, self.prefix = name, prefix
        """Manifest file and shard-name prefix (each rank of a multi-process harvest has its own)."""
        check_cache_dir(self.dir)
        mark_dir(self.dir, "cache")
        self.manifest = manifest
        self._remove_orphans()

    @classmethod
    def open(
        cls, directory: str | Path, manifest: Manifest, resume: bool, name: str = MANIFEST, prefix: str = "shard_"
    ) -> CacheWriter:
        """Start a new cache, reuse a complete one of the same harvest, or with ``resume`` continue an interrupted one.

        A complete cache whose harvest stopped at a smaller budget (``info["max_tokens"]``) than ``manifest`` asks
        for, before the data ran out, is extended (a note on stderr): the windows already written are the ones a
        fresh harvest with the bigger budget would write first. Any difference of model, hook, method, dtype, data
        (path, record count, content hash) or token options is a ValueError listing them, ``--resume`` or not."""
        directory = Path(directory)
        check_cache_dir(directory)
        if not (directory / name).is_file():
            return cls(directory, manifest, name, prefix)
        old = Manifest.read(directory, name)
        check_same_harvest(directory, old, manifest)
        if old.complete:
            short = old.shortfall(manifest.info["max_tokens"]) if "max_tokens" in manifest.info else None
            if short:
                print(f"{directory}: {short}: extending the cache", file=sys.stderr)
                old.complete = False
                old.info["max_tokens"] = manifest.info["max_tokens"]
            return cls(directory, old, name, prefix)  # a finished harvest of the same model, hook, data, options
        if not resume:
            raise ValueError(
                f"{directory}: an interrupted harvest is here ({old.n_tokens:,} vectors in "
                f"{len(old.shards)} shards, not finished); add --resume to continue it, or choose "
                "another --out-dir / --cache-dir"
            )
        return cls(directory, old, name, prefix)

    def _remove_orphans(self) -> None:
        known = {s[k] for s in self.manifest.shards for k in ("acts", "meta", "moments") if k in s}
        for p in self.dir.glob(f"{self.prefix}*"):
            if p.name not in known and owns(self.dir, p.name):  # only shards chatsae wrote (ownership rule)
                p.unlink()

    def write_shard(self, acts: Tensor, meta: dict[str, Tensor], windows_done: int) -> None:
        """Write one shard (``acts`` ``[n, d_in]``, ``meta`` ``{key: [n]}``) and record progress atomically."""
        i = len(self.manifest.shards)
        acts_name, meta_name = f"{self.prefix}{i:05d}.acts.npy", f"{self.prefix}{i:05d}.meta.npz"
        moments_name = f"{self.prefix}{i:05d}.moments.npy"
        np_dtype: type[np.generic] = np.float16 if self.manifest.dtype == "float16" else np.float32
        if self.manifest.dtype == "bfloat16":  # numpy has no bfloat16: its bits are stored as int16
            rounded = acts.detach().to(torch.bfloat16)
            stored, values = rounded.view(torch.int16).cpu().numpy(), rounded.float().cpu().numpy()
        else:
            stored = values = acts.detach().float().cpu().numpy().astype(np_dtype)
        with atomic_file(self.dir / acts_name) as fh:
            np.save(fh, stored)
        with atomic_file(self.dir / meta_name) as fh:
            np.savez(fh, **{k: v.cpu().numpy() for k, v in meta.items()})  # type: ignore[arg-type]  # numpy stub: **kwds typed as allow_pickle
        with atomic_file(self.dir / moments_name) as fh:  # of the vectors as stored (a reader sees the same)
            np.save(fh, channel_moments(values))
        n = int(acts.shape[0])
        self.manifest.shards.append(
            {
                "acts": acts_name,
                "meta": meta_name,
                "moments": moments_name,
                "n": n,
                "acts_blake2b": file_digest(self.dir / acts_name),
                "meta_blake2b": file_digest(self.dir / meta_name),
                "moments_blake2b": file_digest(self.dir / moments_name),
            }
        )
        self.manifest.n_tokens += n
        self.manifest.windows_done = windows_done
        self.manifest.write(self.dir, self.name)

    def finish(self, **info: Any) -> Manifest:
        """Mark the harvest complete, with ``info`` and the channel variance of all the shards recorded."""
        self.manifest.complete = True
        self.manifest.info.update(info)
        record_channel_variance(self.dir, self.manifest)
        self.manifest.write(self.dir, self.name)
        return self.manifest


def record_channel_variance(directory: str | Path, manifest: Manifest) -> dict[str, Any] | None:
    """Sum the channel moments of every shard of ``manifest`` (in shard order: a resumed harvest gets the same bits)
    and record their :func:`~chatsae.activations.variance.variance_summary` as ``info["channel_variance"]``; when a
    shard has no moments (an older harvest) nothing is recorded. A moments file that does not match its digest or
    width is a ValueError."""
    total = np.zeros((2, manifest.d_in), dtype=np.float64)
    for s in manifest.shards:
        if "moments" not in s:
            manifest.info.pop("channel_variance", None)
            return None
        path = Path(directory) / s["moments"]
        check_inside(directory, path, f"{Path(directory) / MANIFEST} shard")
        digest = s.get("moments_blake2b")
        try:
            ok = digest is None or file_digest(path) == digest
            m = np.load(path, allow_pickle=False) if ok else None
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable channel moments ({e})") from e
        if m is None or m.shape != total.shape:
            why = "checksum mismatch with the manifest" if m is None else f"shape {m.shape}, not {total.shape}"
            raise ValueError(f"{path}: {why}; harvest again into a new directory")
        total += m
    summary = variance_summary(total, sum(int(s["n"]) for s in manifest.shards))
    manifest.info["channel_variance"] = summary
    return summary


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
