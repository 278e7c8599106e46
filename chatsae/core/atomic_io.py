"""Atomic writes: a directory (:func:`atomic_dir`) or a file (:func:`atomic_file`) is written to a temporary sibling
and renamed into place, recorded in chatsae's ownership marker; :func:`torch_save` writes through a file handle so
that a full disk is named. Nothing chatsae did not write is ever deleted or replaced."""

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

from .constants import CHECKSUMS_FILE
from .faults import DiskFullError, disk_full, is_disk_full, tree_bytes
from .locking import MARKER, OutputDirError, is_chatsae_dir, is_empty_dir, refuse_foreign
from .ownership import file_digest, intact, read_json, read_marker, record, written


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
