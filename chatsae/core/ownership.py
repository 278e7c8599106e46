"""Which files chatsae wrote: one record, one rule for every writer.

Every directory chatsae creates for an output holds the marker :data:`MARKER` (JSON): its ``kind`` (run, sae,
cache, dashboard, compare, ...), ``files`` (the top-level entries a whole-directory write made) and ``written``
(``{relative path: blake2b digest}`` of each file chatsae wrote there; :data:`LOG` for a log chatsae appends to).
A single output file written into a directory chatsae does not own is recorded in that directory's
:data:`FILES_RECORD` instead (which does not make the directory chatsae's).

The rule, for every command and every output option:

- chatsae replaces or removes only a file it recorded, and only while its bytes are the ones it wrote (a file a user
  edited or put in its place is kept: :func:`owns`); it never removes a folder wholesale (:func:`remove_owned`);
- an output never lands in (or is) an SAE, cache, features, run or checkpoint directory chatsae made for another
  output, nor at or under one of the command's inputs (:func:`check_output_place`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MARKER = ".chatsae"
"""Marker file in every output directory chatsae made (JSON: what wrote it and which files)."""
FILES_RECORD = ".chatsae-files"
"""Record of the single output files chatsae wrote into a directory it does not own (JSON ``written`` map)."""
LOG = "log"
"""Digest placeholder of a file chatsae appends to (a metrics log): owned while it exists."""
PROTECTED_KINDS = frozenset({"sae", "cache", "features", "run", "checkpoint", "output"})
"""Directory kinds that hold one output of chatsae: no other output is written into them."""


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex blake2b (16 bytes) of a file's bytes, read in 4 MiB chunks (memory stays flat for any size)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_chatsae_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def is_empty_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and not any(path.iterdir())


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when it is missing, unreadable or not an object."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def read_marker(path: str | Path) -> dict[str, Any]:
    return read_json(Path(path) / MARKER)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` through a temporary sibling and one rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def written(directory: str | Path) -> dict[str, str]:
    """``{relative path: digest}`` of the files chatsae recorded writing in ``directory``. Entries of a marker's
    ``files`` list (whole-directory writes of older versions) without a digest map to ``""`` (trusted)."""
    directory = Path(directory)
    marker = read_marker(directory)
    out: dict[str, str] = {str(n): "" for n in marker.get("files") or [] if isinstance(n, str)}
    for doc in (marker, read_json(directory / FILES_RECORD)):
        entries = doc.get("written")
        if isinstance(entries, dict):
            out.update({str(k): str(v) for k, v in entries.items()})
    return out


def intact(directory: Path, rel: str, digest: str) -> bool:
    """True if ``directory/rel`` is a plain file whose bytes match ``digest`` (``""``/:data:`LOG`: not checked)."""
    file = directory / rel
    if not file.is_file() or file.is_symlink():
        return False
    return digest in ("", LOG) or file_digest(file) == digest


def owns(directory: str | Path, rel: str) -> bool:
    """True if chatsae wrote file ``directory/rel`` and its bytes are still the ones it wrote."""
    digest = written(directory).get(rel)
    return digest is not None and intact(Path(directory), rel, digest)


def record(directory: str | Path, *rels: str, log: bool = False) -> None:
    """Record that chatsae wrote the files ``rels`` (relative to ``directory``): in its marker when the directory is
    chatsae's, else in :data:`FILES_RECORD`. ``log``: files chatsae appends to (no digest)."""
    directory = Path(directory)
    target = directory / (MARKER if is_chatsae_dir(directory) else FILES_RECORD)
    doc = read_json(target) or {"written_by": "chatsae"}
    old = doc.get("written")
    entries: dict[str, str] = dict(old) if isinstance(old, dict) else {}
    for rel in rels:
        entries[rel] = LOG if log else file_digest(directory / rel)
    doc["written"] = entries
    write_json(target, doc)


def forget(directory: str | Path, rels: Iterable[str]) -> None:
    """Drop ``rels`` from the records of ``directory`` (after chatsae removed them)."""
    directory, rels = Path(directory), list(rels)
    for target in (directory / MARKER, directory / FILES_RECORD):
        doc = read_json(target)
        changed = False
        for key in ("written", "files"):
            value = doc.get(key)
            if isinstance(value, dict):
                popped = [value.pop(r, None) for r in rels]  # every one (any() over a generator stops early)
                changed |= any(d is not None for d in popped)
            elif isinstance(value, list):
                kept = [n for n in value if n not in set(rels)]
                changed |= len(kept) != len(value)
                doc[key] = kept
        if changed:
            write_json(target, doc)


def remove_owned(directory: str | Path, legacy: Iterable[str] = ()) -> list[str]:
    """Remove the files chatsae wrote in ``directory`` (recorded, bytes unchanged; ``legacy``: names taken as chatsae's
    in a marker written before files were recorded), then the folders left empty, the marker and the directory if
    nothing else is left. Returns the entries kept (relative paths), which a user put there or changed."""
    directory = Path(directory)
    if not directory.is_dir() or directory.is_symlink():
        return []
    rec = written(directory)
    marker = read_marker(directory)
    old = is_chatsae_dir(directory) and "files" not in marker and "written" not in marker
    candidates = set(rec) | (set(legacy) if old else set())
    removed = [rel for rel in sorted(candidates) if intact(directory, rel, rec.get(rel, ""))]
    for rel in removed:
        (directory / rel).unlink()
    forget(directory, removed)
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()  # only empty ones
    bookkeeping = {MARKER, FILES_RECORD}
    kept = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.name not in bookkeeping)
    if not kept:
        for name in bookkeeping:
            (directory / name).unlink(missing_ok=True)
        directory.rmdir()
    return kept


def produced_outputs(root: str | Path, kinds: Iterable[str]) -> list[Path]:
    """Directories under ``root`` (not ``root`` itself) that chatsae made for an output of one of ``kinds`` and that
    still hold a file chatsae wrote there, unchanged (:func:`owns`): what a command already produced, by the record
    rather than by file names (a user's ``sae/cfg.json`` does not count)."""
    root, wanted = Path(root), set(kinds)
    found = []
    for marker in sorted(root.rglob(MARKER)) if root.is_dir() else []:
        d = marker.parent
        if d == root or d.is_symlink() or str(read_marker(d).get("kind", "")) not in wanted:
            continue
        if any(intact(d, rel, digest) for rel, digest in written(d).items()):
            found.append(d)
    return found


def enclosing_output(path: str | Path) -> tuple[Path, str] | None:
    """(directory, kind) of the nearest directory at or above ``path`` that chatsae made for a protected output
    (:data:`PROTECTED_KINDS`), else None."""
    p = Path(os.path.abspath(path))
    for d in (p, *p.parents):
        if d.is_dir() and is_chatsae_dir(d):
            kind = str(read_marker(d).get("kind", ""))
            if kind in PROTECTED_KINDS:
                return d, kind
    return None


def check_output_place(
    path: str | Path,
    option: str,
    inputs: Iterable[str | Path | None] = (),
    kind: str | None = None,
    subdir: bool = False,
) -> Path:
    """``path`` if an output may go there: a :class:`ValueError` naming ``option`` when it equals or lies inside one
    of ``inputs``, is a dangling symbolic link, or lies in (or is) an SAE, cache, features, run or checkpoint
    directory of chatsae (unless that directory is of ``kind``, the output's own; ``"*"``: any). ``subdir``: the
    output is a directory, allowed as a new sub-directory of an SAE directory (e.g. ``SAE/neuronpedia``, where
    features, dashboards and exports go by default) whose name is none of the files chatsae wrote there: it replaces
    none of them."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{path}: {option} is a symbolic link to {os.readlink(path)}, which does not exist")
    real = path.resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        src = Path(given).resolve()
        if real == src or src in real.parents:
            what = "is" if real == src else "lies inside"
            raise ValueError(f"{path}: {option} {what} the input {given}; choose an output path outside the inputs")
    found = enclosing_output(real)
    if found is not None and subdir and found[1] == "sae" and real != found[0]:
        top = real.relative_to(found[0]).parts[0]
        if top not in written(found[0]) and not (found[0] / top).is_file():
            found = None  # a sub-directory of its own: none of that directory's files is touched
    if found is not None and found[1] != kind and kind != "*":
        where, what = found
        raise ValueError(
            f"{path}: {option} lies inside {where}, a {what} directory of chatsae; choose a path outside it "
            f"(its own files would be replaced)"
        )
    return path


def check_replace(path: str | Path, option: str) -> None:
    """A :class:`ValueError` naming ``option`` if writing ``path`` would replace a file (or anything else) that chatsae
    did not write there."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not path.is_symlink():
        raise ValueError(f"{path}: {option} names a directory, not a file")
    if not owns(path.parent, path.name):
        raise ValueError(
            f"{path}: exists and chatsae did not write it (or it changed since); move it away or choose another "
            f"{option} (chatsae never replaces a file it did not write)"
        )
