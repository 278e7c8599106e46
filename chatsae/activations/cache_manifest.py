"""The activation cache's manifest (:class:`Manifest`: what a cache holds and how far its harvest got) and the
checks on a cache directory before it is read or extended (:func:`check_cache_dir`, :func:`check_same_harvest`,
:func:`finished_cache`). The cache's layout is described in :mod:`chatsae.activations.cache`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.constants import CACHE_MANIFEST_FILE
from ..core.locking import LOCK, MARKER, OutputDirError, is_chatsae_dir
from ..core.ownership import read_marker
from ..core.utils import atomic_file, safe_name

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
    (``--distribute-saes``). A cache of other settings is the ValueError of
    :meth:`~chatsae.activations.cache_writer.CacheWriter.open`."""
    directory = Path(directory)
    check_cache_dir(directory)
    if not (directory / MANIFEST).is_file():
        return None
    old = Manifest.read(directory)
    check_same_harvest(directory, old, manifest)
    return old if old.complete and old.shortfall(max_tokens) is None else None
