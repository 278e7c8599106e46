"""Output-directory ownership and run locks: one home for "did chatsae write this?" and "is someone writing here?".

- Every directory chatsae creates for its outputs (run out-dirs, SAE dirs, caches, dashboards, exports) holds a marker
  file :data:`MARKER`; :func:`claim_dir` refuses a non-empty directory without it unless ``overwrite`` is given.
- :class:`DirLock` is an exclusive lock file (``O_CREAT | O_EXCL``) holding the owner's pid and host; a second
  process gets a clear error, and a lock left by a dead process on this host is detected as stale and replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from .ownership import MARKER, check_output_place, is_chatsae_dir, is_empty_dir

__all__ = [
    "LOCK",
    "MARKER",
    "DirLock",
    "OutputDirError",
    "check_claim",
    "claim_dir",
    "is_chatsae_dir",
    "is_empty_dir",
    "mark_dir",
    "refuse_foreign",
]

LOCK = ".chatsae.lock"


class OutputDirError(ValueError):
    """An output directory that chatsae may not write into (foreign, or locked by another process)."""


def mark_dir(path: str | Path, kind: str) -> None:
    """Write the marker into ``path`` (created if needed); ``kind`` says what lives there (run, sae, cache...)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"written_by": "chatsae", "kind": kind}) + "\n")


def claim_dir(
    path: str | Path, kind: str, overwrite: bool = False, option: str = "--out-dir", inputs: tuple[object, ...] = ()
) -> Path:
    """Make ``path`` an output directory of chatsae: fine if missing, empty or already chatsae's; a non-empty
    directory without the marker is refused (:class:`OutputDirError` naming it) unless ``overwrite``; a dangling
    symbolic link, a path at or inside one of ``inputs`` (paths) or inside chatsae's directory of another output
    (:func:`chatsae.core.ownership.check_output_place`) is refused."""
    path = check_claim(path, kind, overwrite, option, inputs)
    top = next((d for d in reversed((path, *path.parents)) if not d.exists()), None)
    mark_dir(path, kind)
    if top is not None:
        _CREATED[str(path.resolve())] = top
    return path


_CREATED: dict[str, Path] = {}
"""Directories :func:`claim_dir` created in this process -> the topmost folder it had to create for them."""


def release_unused(path: str | Path) -> None:
    """Remove ``path`` again, with the parent folders made for it, if :func:`claim_dir` created it in this process and
    nothing but its marker is in it (a command that failed on its inputs leaves no output directory behind)."""
    path = Path(path)
    top = _CREATED.get(str(path.resolve()))
    if top is None or not path.is_dir() or {p.name for p in path.iterdir()} - {MARKER}:
        return
    _CREATED.pop(str(path.resolve()), None)
    (path / MARKER).unlink(missing_ok=True)
    for d in (path, *path.parents):
        try:
            d.rmdir()
        except OSError:
            break
        if d == top:
            break


def check_claim(
    path: str | Path, kind: str, overwrite: bool = False, option: str = "--out-dir", inputs: tuple[object, ...] = ()
) -> Path:
    """The checks of :func:`claim_dir` without creating anything (run them before a model loads)."""
    path = Path(path)
    try:
        check_output_place(path, option, [str(i) for i in inputs if i], kind, subdir=True)
    except ValueError as e:
        raise OutputDirError(str(e)) from None
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{path}: {option} is a file, not a directory")
    if path.is_dir() and not is_empty_dir(path) and not is_chatsae_dir(path):
        refuse_foreign(path, option, overwrite)
    return path


def refuse_foreign(path: str | Path, option: str, overwrite: bool) -> None:
    """The error for a non-empty directory without the marker (nothing if ``overwrite``)."""
    if not overwrite:
        raise OutputDirError(
            f"{path}: {option} is a non-empty directory that chatsae did not write (no {MARKER} marker); "
            "choose another directory, or pass --overwrite to add chatsae's files to it (it never replaces or removes "
            "a file it did not write)"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLock:
    """Exclusive lock on a directory for one process (``with DirLock(dir, "training"): ...``).

    Re-entrant within one process (a nested ``DirLock`` on the same directory by the same pid is a no-op)."""

    _held: dict[str, int] = {}

    def __init__(self, directory: str | Path, what: str = "a chatsae run") -> None:
        self.dir = Path(directory)
        self.path = self.dir / LOCK
        self.what = what
        self._owner = False

    def _read(self) -> dict[str, object]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> DirLock:
        key = str(self.dir.resolve())
        if DirLock._held.get(key):
            DirLock._held[key] += 1
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": self.what, "since": time.time()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._read()
                pid, host = held.get("pid"), held.get("host")
                stale = isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid)
                if not stale and not (held == {} and time.time() - self.path.stat().st_mtime > 60):
                    raise OutputDirError(
                        f"{self.dir}: in use by {held.get('what', 'another process')} (pid {pid} on {host}; lock file "
                        f"{self.path}); wait for it to finish, or remove the lock file if that process is gone"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # stale: its process is dead
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(info)
            DirLock._held[key] = 1
            self._owner = True
            return self
        raise OutputDirError(f"{self.dir}: could not take the lock {self.path}")

    def release(self) -> None:
        key = str(self.dir.resolve())
        count = DirLock._held.get(key, 0)
        if count > 1:
            DirLock._held[key] = count - 1
            return
        DirLock._held.pop(key, None)
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                if self._read().get("pid") == os.getpid():
                    self.path.unlink()
            self._owner = False
            release_unused(self.dir)

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
