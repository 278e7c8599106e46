"""Small shared helpers: safe path names, output-file checks and writes, JSON reads, dtype parsing, safetensors
headers. The atomic file/directory writes are in :mod:`chatsae.core.atomic_io` and file digests in
:mod:`chatsae.core.ownership`; both are importable from here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .atomic_io import atomic_dir, atomic_file, torch_save
from .constants import DTYPE_ALIASES
from .ownership import check_output_place, check_replace, file_digest, record

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
