"""Small shared helpers: atomic file/directory writes, file digests, safe path names, seeding, dtype parsing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

import torch

from .constants import DTYPE_ALIASES
from .locking import MARKER, OutputDirError, is_chatsae_dir, is_empty_dir, refuse_foreign


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex blake2b (16 bytes) of a file's bytes, read in 4 MiB chunks (memory stays flat for any size)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def safe_name(value: str, option: str) -> str:
    """``value`` if it is one plain path component (no separator, not ``.``/``..``, no control character), else a
    ValueError naming ``option``: for user-given names that are joined into an output path."""
    bad = [c for c in value if ord(c) < 32 or ord(c) == 127]
    if not value.strip() or value in (".", "..") or "/" in value or "\\" in value or bad or value.startswith("~"):
        raise ValueError(f"{option}: {value!r} is not a plain name (no '/', '\\', '..', '~' or control characters)")
    return value


def check_inside(root: str | Path, target: str | Path, option: str) -> Path:
    """``target`` if it resolves (symlinks followed) inside ``root``, else a ValueError naming ``option``."""
    root_r, target_r = Path(root).resolve(), Path(target).resolve()
    if target_r != root_r and root_r not in target_r.parents:
        raise ValueError(f"{option}: {target} resolves to {target_r}, outside the output root {root_r}")
    return Path(target)


def _read_marker(path: Path) -> dict:
    try:
        doc = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write_marker(path: Path, kind: str, files: set[str]) -> None:
    (path / MARKER).write_text(json.dumps({"written_by": "chatsae", "kind": kind, "files": sorted(files)}) + "\n")


@contextlib.contextmanager
def atomic_dir(
    path: str | Path, overwrite: bool = False, kind: str = "output", option: str = "output directory"
) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it becomes ``path``, with a :data:`MARKER` that lists
    the entries chatsae wrote. Nothing chatsae did not write is ever deleted:

    - ``path`` missing or empty: one rename (atomic).
    - ``path`` is chatsae's (marker present): the entries of the old directory that chatsae did not write (not in its
      marker's list, not rewritten now, e.g. ``features/`` of an SAE dir or a user's notes) are moved into the new
      directory, which then replaces the old one in one rename; the old copy (only chatsae's files) is removed.
    - ``path`` is a non-empty directory chatsae did not write: :class:`OutputDirError` naming ``option`` unless
      ``overwrite``; with ``overwrite`` chatsae's files are moved into it one by one (not atomic): a file at the same
      relative path is replaced, directories are merged, and every other file is left as it is.
    """
    path = Path(path)
    if path.is_symlink():
        raise OutputDirError(f"{path}: {option} is a symbolic link; give the directory it points to instead")
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path}: {option} is a file, not a directory")
    foreign = path.is_dir() and not is_empty_dir(path) and not is_chatsae_dir(path)
    if foreign:
        refuse_foreign(path, option, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
        written = {p.name for p in tmp.iterdir()} - {MARKER}
        if foreign:
            _merge_into(tmp, path, written, kind)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        _write_marker(tmp, kind, written)
        if not path.exists() or is_empty_dir(path):
            os.replace(tmp, path)
            return
        ours = set(_read_marker(path).get("files") or []) | written | {MARKER}
        kept = [p.name for p in path.iterdir() if p.name not in ours]
        _move_entries(path, tmp, kept)
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        try:
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
        except BaseException:
            _move_entries(tmp, path, kept)  # give the kept entries back before the temporary copy is removed
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_entries(src: Path, dst: Path, names: list[str]) -> None:
    """Move entries ``names`` from ``src`` to ``dst`` (same filesystem); on failure move the moved ones back."""
    moved: list[str] = []
    try:
        for name in names:
            os.rename(src / name, dst / name)
            moved.append(name)
    except BaseException:
        for name in moved:
            os.rename(dst / name, src / name)
        raise


def _merge_into(tmp: Path, path: Path, written: set[str], kind: str) -> None:
    """``--overwrite`` into a foreign directory: chatsae's files are moved in, file by file (a file of the same
    relative path is replaced; directories are merged), and every other file is kept. A file where chatsae needs a
    directory (or the reverse) is refused before anything moves."""
    moves: list[tuple[Path, Path]] = []

    def plan(src: Path, dst: Path) -> None:
        if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
            for child in sorted(src.iterdir()):
                plan(child, dst / child.name)
        elif (dst.exists() or dst.is_symlink()) and (src.is_dir() or dst.is_dir()):
            raise OutputDirError(
                f"{dst}: --overwrite cannot write chatsae's {'directory' if src.is_dir() else 'file'}"
                " here (a different kind of entry is in the way); move it away"
            )
        else:
            moves.append((src, dst))

    for name in sorted(written):
        plan(tmp / name, path / name)
    for src, dst in moves:
        os.replace(src, dst)
    _write_marker(path, kind, written | set(_read_marker(path).get("files") or []))


@overload
def atomic_file(path: str | Path, mode: Literal["w"]) -> contextlib.AbstractContextManager[TextIO]: ...
@overload
def atomic_file(path: str | Path, mode: Literal["wb"] = ...) -> contextlib.AbstractContextManager[BinaryIO]: ...
@overload
def atomic_file(path: str | Path, mode: str) -> contextlib.AbstractContextManager[IO[Any]]: ...
def atomic_file(path: str | Path, mode: str = "wb") -> contextlib.AbstractContextManager[IO[Any]]:
    """Open a temporary sibling file for writing; on success rename it over ``path`` (fsync'd first). The handle is
    text for ``mode="w"`` and binary for the default ``"wb"``."""
    return _atomic_file(path, mode)


@contextlib.contextmanager
def _atomic_file(path: str | Path, mode: str) -> Iterator[IO[Any]]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the result ordinary permissions
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"float32"``/``"bf16"``/``torch.float16`` -> torch dtype, with a clear error."""
    if isinstance(name, torch.dtype):
        return name
    if not isinstance(name, str):
        raise ValueError(f"unknown dtype {name!r}; use float32, float16 or bfloat16")
    key = DTYPE_ALIASES.get(name.lower().replace("torch.", ""), name.lower().replace("torch.", ""))
    dtype = getattr(torch, key, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unknown dtype {name!r}; use float32, float16 or bfloat16")
    return dtype


_ST_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` from a ``.safetensors`` header, checked against the file size without reading the
    data: a truncated or garbage file gives one ValueError naming it (nothing is allocated from its numbers)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, 100 << 20):
            raise ValueError(
                f"{path}: not a valid safetensors file (truncated or garbage: header length {n}, "
                f"file size {size} bytes)"
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid safetensors file (unreadable header: {e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a valid safetensors file (header is not a JSON object)")
    data_len, shapes = size - 8 - n, {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(t, dict) and t.get("dtype") in _ST_ITEMSIZE and isinstance(t.get("shape"), list)
        ok = ok and all(isinstance(d, int) and d >= 0 for d in t["shape"])
        offsets = t.get("data_offsets") if ok else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"{path}: not a valid safetensors file (bad header entry for tensor {name!r})")
        nbytes = _ST_ITEMSIZE[t["dtype"]]
        for d in t["shape"]:
            nbytes *= d
        if not 0 <= offsets[0] <= offsets[1] or offsets[1] - offsets[0] != nbytes:
            raise ValueError(
                f"{path}: not a valid safetensors file (tensor {name!r}: shape {t['shape']} does not "
                f"match its byte range {offsets})"
            )
        if offsets[1] > data_len:
            raise ValueError(
                f"{path}: truncated safetensors file (tensor {name!r} needs {offsets[1]} data bytes, "
                f"the file has {data_len})"
            )
        shapes[name] = tuple(t["shape"])
    return shapes
