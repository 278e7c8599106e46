"""Faults named as what they are: a full disk is "disk full while writing FILE (N MiB needed, M MiB free)", whichever
library raised it (Python's OSError ENOSPC, safetensors' ``IoError(... StorageFull ...)``, torch's writer)."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

DISK_FULL_TEXTS = ("No space left on device", "StorageFull", "os error 28", "Disk quota exceeded", "error code: 28")
"""How libraries that do not raise OSError spell ENOSPC / EDQUOT in their messages."""


class DiskFullError(OSError):
    """The disk (or quota) filled up while chatsae wrote a file; the message names the file and the sizes."""


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT, raised as an OSError or spelled in another library's error text."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(t in str(exc) for t in DISK_FULL_TEXTS)


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing folder), None if unknown."""
    p = Path(path).absolute()
    for d in (p, *p.parents):
        if d.exists():
            with contextlib.suppress(OSError):
                return shutil.disk_usage(d).free
            return None
    return None


def disk_full(path: str | Path, needed: int | None) -> DiskFullError:
    """The one error for a full disk while writing ``path`` (``needed`` bytes, when known)."""
    free = free_bytes(path)
    mib = "unknown" if needed is None else f"{needed / 2**20:,.1f} MiB"
    have = "unknown" if free is None else f"{free / 2**20:,.1f} MiB"
    err = DiskFullError(f"disk full while writing {path} ({mib} needed, {have} free)")
    err.errno = errno.ENOSPC
    return err


def tree_bytes(path: str | Path) -> int:
    """Bytes of the file ``path`` or of all files under the folder ``path`` (0 if missing)."""
    p = Path(path)
    with contextlib.suppress(OSError):
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return 0


@contextlib.contextmanager
def named_disk_full(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full-disk error of any library raised in the block into :func:`disk_full` naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise disk_full(path, needed) from e
        raise
