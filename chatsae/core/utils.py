"""Small shared helpers: atomic file/directory writes, file digests, safe path names, seeding, dtype parsing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

import torch

from .constants import CHECKSUMS_FILE, DTYPE_ALIASES
from .faults import DiskFullError, disk_full, is_disk_full, tree_bytes
from .locking import MARKER, OutputDirError, is_chatsae_dir, is_empty_dir, refuse_foreign
from .ownership import (
    check_output_place,
    check_replace,
    file_digest,
    intact,
    read_json,
    read_marker,
    record,
    written,
)

__all__ = [
    "atomic_dir",
    "atomic_file",
    "check_inside",
    "check_output_file",
    "file_digest",
    "parse_dtype",
    "read_json_file",
    "safe_name",
    "safetensors_shapes",
    "torch_save",
    "write_output_file",
]


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


def _write_marker(path: Path, kind: str, files: set[str], digests: dict[str, str]) -> None:
    doc = {"written_by": "chatsae", "kind": kind, "files": sorted(files), "written": dict(sorted(digests.items()))}
    (path / MARKER).write_text(json.dumps(doc) + "\n")


def _digests(tmp: Path) -> dict[str, str]:
    """``{relative path: digest}`` of every file under ``tmp`` (a ``checksums.json`` there supplies the digests of
    the files it lists: big weights are hashed once)."""
    known = read_json(tmp / CHECKSUMS_FILE)
    out = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file() and not f.is_symlink() and f.name != MARKER:
            rel = f.relative_to(tmp).as_posix()
            given = known.get(rel)
            out[rel] = given if isinstance(given, str) else file_digest(f)
    return out


@contextlib.contextmanager
def atomic_dir(
    path: str | Path,
    overwrite: bool = False,
    kind: str = "output",
    option: str = "output directory",
    needed: int | None = None,
) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it becomes ``path``, with a :data:`MARKER` that lists
    the entries chatsae wrote. Nothing chatsae did not write is ever deleted:

    - ``path`` missing or empty: one rename (atomic).
    - ``path`` is chatsae's (marker present): the entries of the old directory that chatsae did not write (not in its
      marker's list, not rewritten now, e.g. ``features/`` of an SAE dir or a user's notes) are moved into the new
      directory, which then replaces the old one in one rename; the old copy (only chatsae's files) is removed.
    - ``path`` is a non-empty directory chatsae did not write: :class:`OutputDirError` naming ``option`` unless
      ``overwrite``; with ``overwrite`` chatsae's files are moved into it one by one (not atomic): directories are
      merged and every other file is left as it is; a file of the same relative path that chatsae did not write is
      refused before anything moves.

    The marker records each file written with its digest (:mod:`chatsae.core.ownership`). A full disk is the
    :class:`chatsae.core.faults.DiskFullError` naming ``path`` (``needed``: the bytes the directory needs, if known).
    """
    path = Path(path)
    if path.is_symlink():
        target = os.readlink(path)
        if not path.exists():
            raise OutputDirError(f"{path}: {option} is a symbolic link to {target}, which does not exist")
        raise OutputDirError(
            f"{path}: {option} is a symbolic link (to {target}); give the directory it points to instead"
        )
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path}: {option} is a file, not a directory")
    theirs = str(read_marker(path).get("kind", "")) if is_chatsae_dir(path) else ""
    if theirs not in ("", kind, "output"):  # e.g. a dashboard --out naming an SAE directory: its files stay
        raise OutputDirError(f"{path}: {option} is chatsae's {theirs} directory, not a {kind}; choose another {option}")
    foreign = path.is_dir() and not is_empty_dir(path) and not is_chatsae_dir(path)
    if foreign:
        refuse_foreign(path, option, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        try:
            yield tmp
            names = {p.name for p in tmp.iterdir()} - {MARKER}
            digests = _digests(tmp)
            if foreign:
                _merge_into(tmp, path, names, kind, digests)
                shutil.rmtree(tmp, ignore_errors=True)
                return
            _write_marker(tmp, kind, names, digests)
        except DiskFullError as e:
            if str(tmp) in str(e):  # a writer inside the temporary copy (torch_save): name the directory
                raise disk_full(path, needed or tree_bytes(tmp)) from e
            raise
        except Exception as e:
            if is_disk_full(e):
                raise disk_full(path, needed or tree_bytes(tmp)) from e
            raise
        if not path.exists() or is_empty_dir(path):
            os.replace(tmp, path)
            return
        old_files = written(path)
        ours = {n for n in read_marker(path).get("files") or [] if _ours_entry(path, n, old_files)} | names | {MARKER}
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


def _ours_entry(path: Path, name: str, files: dict[str, str]) -> bool:
    """True if top-level entry ``name`` of chatsae's directory ``path`` is chatsae's: a folder, or a file whose
    bytes are the ones recorded (a file a user put in its place is kept)."""
    entry = path / name
    if entry.is_dir() and not entry.is_symlink():
        return True
    return not (entry.exists() or entry.is_symlink()) or intact(path, name, files.get(name, ""))


def _merge_into(tmp: Path, path: Path, names: set[str], kind: str, digests: dict[str, str]) -> None:
    """``--overwrite`` into a foreign directory: chatsae's files are moved in, file by file (directories are merged),
    and every other file is kept. A file of the same relative path that chatsae did not write, or a file where chatsae
    needs a directory (or the reverse), is refused before anything moves."""
    moves: list[tuple[Path, Path]] = []
    before = written(path)

    def plan(src: Path, dst: Path) -> None:
        if src.is_dir() and not src.is_symlink() and dst.is_dir() and not dst.is_symlink():
            for child in sorted(src.iterdir()):
                plan(child, dst / child.name)
        elif (dst.exists() or dst.is_symlink()) and (src.is_dir() or dst.is_dir()):
            raise OutputDirError(
                f"{dst}: --overwrite cannot write chatsae's {'directory' if src.is_dir() else 'file'}"
                " here (a different kind of entry is in the way); move it away"
            )
        elif (dst.exists() or dst.is_symlink()) and not intact(
            path, dst.relative_to(path).as_posix(), before.get(dst.relative_to(path).as_posix(), "-")
        ):
            raise OutputDirError(
                f"{dst}: a file chatsae did not write is where chatsae's output goes; move it away or choose another "
                "directory (--overwrite never replaces a user's file)"
            )
        else:
            moves.append((src, dst))

    for name in sorted(names):
        plan(tmp / name, path / name)
    for src, dst in moves:
        os.replace(src, dst)
    marker = read_marker(path)
    _write_marker(path, kind, names | set(marker.get("files") or []), {**before, **digests})


@overload
def atomic_file(
    path: str | Path, mode: Literal["w"], needed: int | None = ..., keep_record: bool = ...
) -> contextlib.AbstractContextManager[TextIO]: ...
@overload
def atomic_file(
    path: str | Path, mode: Literal["wb"] = ..., needed: int | None = ..., keep_record: bool = ...
) -> contextlib.AbstractContextManager[BinaryIO]: ...
@overload
def atomic_file(
    path: str | Path, mode: str, needed: int | None = ..., keep_record: bool = ...
) -> contextlib.AbstractContextManager[IO[Any]]: ...
def atomic_file(
    path: str | Path, mode: str = "wb", needed: int | None = None, keep_record: bool = True
) -> contextlib.AbstractContextManager[IO[Any]]:
    """Open a temporary sibling file for writing; on success rename it over ``path`` (fsync'd first). The handle is
    text for ``mode="w"`` and binary for the default ``"wb"``. In a directory chatsae owns the file is recorded in
    its marker with its digest (``keep_record=False``: the caller keeps its own record, e.g. a cache manifest). A
    full disk is the :class:`chatsae.core.faults.DiskFullError` naming ``path`` (``needed``: bytes, if known)."""
    return _atomic_file(path, mode, needed, keep_record)


@contextlib.contextmanager
def _atomic_file(path: str | Path, mode: str, needed: int | None, keep_record: bool) -> Iterator[IO[Any]]:
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
        if keep_record and is_chatsae_dir(path.parent):
            record(path.parent, path.name)
    except BaseException as e:
        size = tree_bytes(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, Exception) and not isinstance(e, DiskFullError) and is_disk_full(e):
            raise disk_full(path, max(needed or 0, size) or None) from e
        raise


def torch_save(obj: Any, path: str | Path, needed: int | None = None) -> Path:
    """``torch.save(obj, path)`` through a Python file handle: given a path, torch's C++ writer reports a full disk as
    a RuntimeError naming neither the file nor ENOSPC (``unexpected pos ...``); through a handle the write raises
    ENOSPC, turned into :func:`chatsae.core.faults.disk_full` naming ``path`` (``needed``: bytes, if known)."""
    path = Path(path)
    try:
        with open(path, "wb") as fh:
            torch.save(obj, fh)
    except DiskFullError:
        raise
    except Exception as e:
        chain: list[BaseException] = []
        link: BaseException | None = e
        while link is not None and len(chain) < 8:
            chain.append(link)
            link = link.__cause__ or link.__context__
        if any(is_disk_full(x) for x in chain):
            raise disk_full(path, needed or _tensor_bytes(obj) or None) from e
        raise
    return path


def _tensor_bytes(obj: Any, depth: int = 0) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists, tuples): what ``torch.save`` needs at least."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if depth > 20:
        return 0
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, depth + 1) for v in obj)
    return 0


def check_output_file(path: str | Path, option: str, inputs: tuple[object, ...] = (), own_place: bool = False) -> Path:
    """Run before anything loads, for an output-file option: ``path`` must not be (or lie in) one of ``inputs`` nor,
    unless ``own_place`` (the command's default place, e.g. ``eval.json`` beside the SAE), lie inside an SAE,
    cache, features, run or checkpoint directory; an existing file there must be one chatsae wrote."""
    path = Path(path)
    check_output_place(path, option, [str(i) for i in inputs if i], None if not own_place else "*")
    check_replace(path, option)
    return path


def write_output_file(path: str | Path, text: str, option: str) -> Path:
    """Write the text output ``path`` (checked again: a file chatsae did not write is never replaced) atomically and
    record it as chatsae's (:func:`chatsae.core.ownership.record`), so a rerun may replace it."""
    path = Path(path)
    check_replace(path, option)
    with atomic_file(path, "w", keep_record=False) as fh:
        fh.write(text)
    record(path.parent, path.name)
    return path


def read_json_file(path: str | Path, expected: str, kind: type = dict) -> Any:
    """The JSON document of ``path``, a ``kind`` (default: an object). A file that is not valid JSON (or UTF-8), is
    nested too deeply to read (e.g. 100,000 ``[``) or holds another type is a ValueError naming the file and
    ``expected`` (what the file should hold), raised here rather than as a bare RecursionError."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read; expected {expected}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({e}); expected {expected}") from None
    if not isinstance(doc, kind):
        shape = "a JSON object" if kind is dict else "a JSON list" if kind is list else kind.__name__
        raise ValueError(f"{path}: expected {expected} ({shape}), got {type(doc).__name__}")
    return doc


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
