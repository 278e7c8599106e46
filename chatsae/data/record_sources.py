"""Where records come from: raw streams of (record number, line or None, raw record) from local ``.json`` (a list, or
JSON lines), ``.jsonl``/``.ndjson``, ``.parquet`` (needs pyarrow), ``.txt`` (cut by ``text_split``) or a Hugging Face
``datasets`` name. A line that is not valid JSON comes through as a :class:`BadRecord` for the reader to report or
skip; a source that cannot be read at all is a :class:`DataFormatError`."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..core.faults import is_disk_full
from .record_formats import BadRecord, DataFormatError

SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "txt"}
"""File suffixes read, and the reader of each."""
TEXT_SPLITS = ("line", "blank_line", "whole")
"""How a ``.txt`` file is cut into documents (``text_split``)."""

RawItem = tuple[int, int | None, Any]


def _jsonl(path: Path) -> Iterator[RawItem]:
    n = 0
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                rec = BadRecord(None, f"invalid JSON ({e.msg} at column {e.colno})")
            except RecursionError:
                rec = BadRecord(None, "JSON nested too deeply to read (expected a record object of fields)")
            yield n, lineno, rec
            n += 1


def _json(path: Path) -> Iterator[RawItem]:
    with open(path, encoding="utf-8-sig") as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines in a .json file
            yield from _jsonl(path)
            return
        raise DataFormatError(f"{path.name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataFormatError(
            f"{path.name}: JSON nested too deeply to read; expected a list of records (or JSON lines)"
        ) from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataFormatError(f"{path.name}: expected a JSON list of records (or one object holding one list)")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataFormatError(f"{path.name}: expected a JSON list of records, got {type(data).__name__}")
    for i, rec in enumerate(data):
        yield i, None, rec


def _parquet(path: Path) -> Iterator[RawItem]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path.name}: reading Parquet needs pyarrow: pip install pyarrow") from None
    n = 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        for batch in batches:
            for rec in batch.to_pylist():
                yield n, None, rec
                n += 1
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid / ArrowIOError are ValueError / OSError
        if is_disk_full(e):
            raise
        why = " ".join(str(e).split())[:160]
        raise DataFormatError(
            f"{path.name}: not a valid Parquet file after {n} records (truncated or damaged?): {why}"
        ) from None


def _txt(path: Path, text_split: str) -> Iterator[RawItem]:
    n = 0
    with open(path, encoding="utf-8-sig") as fh:
        if text_split == "whole":
            if fh.read(1) != "":
                fh.seek(0)
                yield 0, None, fh.read().strip()
            return
        para: list[str] = []
        for lineno, line in enumerate(fh, 1):
            if text_split == "line":
                if line.strip():
                    yield n, lineno, line.strip()
                    n += 1
            elif line.strip():
                para.append(line.rstrip("\n"))
            elif para:
                yield n, lineno, "\n".join(para).strip()
                n, para = n + 1, []
        if para:
            yield n, None, "\n".join(para).strip()


def _hf(name: str, split: str, config: str | None) -> Iterator[RawItem]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"{name}: no such file; reading it as a Hugging Face dataset name needs the datasets package: "
            "pip install 'chatsae[datasets]' (or pip install datasets)",
            name="datasets",
        ) from None
    ds = datasets.load_dataset(name, config, split=split, streaming=True)
    for i, rec in enumerate(ds):
        yield i, None, rec


def open_source(source: str | Path, split: str, text_split: str, config: str | None) -> tuple[str, Callable]:
    """(display name, function returning a fresh raw stream)."""
    path = Path(source)
    if path.is_dir():
        raise DataFormatError(f"{path}: is a directory; pass a .json, .jsonl, .parquet or .txt file")
    if path.is_file():
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataFormatError(
                f"{path.name}: unsupported file type {path.suffix!r}; supported: {', '.join(SUFFIXES)} "
                "or a Hugging Face dataset name"
            )
        if path.stat().st_size == 0 or (kind != "parquet" and not _has_content(path)):
            raise DataFormatError(f"{path.name}: the file is empty")
        if kind == "txt":
            return path.name, functools.partial(_txt, path, text_split)
        return path.name, functools.partial({"json": _json, "jsonl": _jsonl, "parquet": _parquet}[kind], path)
    if path.suffix.lower() in SUFFIXES or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source}: no such file")
    return str(source), functools.partial(_hf, str(source), split, config)


def utf8_guard(name: str, stream: Iterator[RawItem]) -> Iterator[RawItem]:
    try:
        yield from stream
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _has_content(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return any(line.strip() for line in fh)
