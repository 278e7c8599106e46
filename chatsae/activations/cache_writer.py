"""Writing an activation cache: :class:`CacheWriter` appends checksummed shards (activations, metadata, channel
moments) and rewrites the manifest atomically after each; :func:`record_channel_variance` sums the shards' moments
into the manifest when the harvest finishes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.locking import mark_dir
from ..core.ownership import owns
from ..core.utils import atomic_file, check_inside, file_digest
from .cache_manifest import MANIFEST, Manifest, check_cache_dir, check_same_harvest
from .variance import channel_moments, variance_summary


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
