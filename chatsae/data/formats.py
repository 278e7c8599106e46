"""Reading training records: chat ``messages``, ShareGPT, Alpaca, Q/A pairs and plain text.

Sources: local ``.json`` (a list of records, or JSON lines), ``.jsonl``/``.ndjson``, ``.parquet`` (needs pyarrow),
``.txt``, or a Hugging Face ``datasets`` name. The format is detected from the first valid record or forced with
``fmt=``. Record numbers in error messages are 0-based positions in the source (``record 17`` is ``data[17]`` of a
JSON list); JSONL errors also give the 1-based line. JSONL, txt and Parquet are streamed.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from ..core.faults import is_disk_full

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
}
FORMATS = ("messages", "sharegpt", "alpaca", "qa", "text")
_FMT_ALIASES = {"chat": "messages", "openai": "messages", "conversation": "messages", "gsm8k": "qa", "txt": "text"}
FORMAT_NAMES = ("auto", *FORMATS, *_FMT_ALIASES)
"""Every accepted ``fmt`` / ``--data-format`` value."""
QA_PAIRS = (("question", "answer"), ("prompt", "response"), ("prompt", "completion"))
_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "txt"}
_TEXT_SPLITS = ("line", "blank_line", "whole")
_KNOWN = (
    "messages/conversation (chat), conversations (ShareGPT), instruction+output (Alpaca), "
    "question+answer / prompt+response / prompt+completion (Q/A), text (plain text; or pass text_field=)"
)


class DataFormatError(ValueError):
    """A malformed source or record; the message names the file, the record number and the field."""


class Record(NamedTuple):
    """One sample: ``messages`` (list of ``{"role", "content"}``) for chat formats, ``text`` for plain text."""

    index: int  # type: ignore[assignment]  # a field named like tuple.index (shadowing it is intended)
    messages: list[dict] | None
    text: str | None


class _Bad(Exception):
    """A record-level problem (field path + reason), turned into a DataFormatError with file and record."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class _Fmt:
    name: str
    keys: tuple[str, ...] = ()  # messages key / Q-A key pair / text field


# ---------------------------------------------------------------- record parsing (one dict -> messages or text)


def _str_field(rec: dict, key: str, path: str | None = None) -> str:
    path = path or key
    if key not in rec:
        raise _Bad(path, "is missing")
    val = rec[key]
    if not isinstance(val, str):
        raise _Bad(path, f"must be a string, got {type(val).__name__}")
    return val


def _turns(rec: dict, key: str) -> list[dict]:
    """Parse a list of turns (``role``/``content`` or ``from``/``value``) into normalised messages."""
    if key not in rec:
        raise _Bad(key, "is missing")
    turns = rec[key]
    if not isinstance(turns, list):
        raise _Bad(key, f"must be a list of turns, got {type(turns).__name__}")
    if not turns:
        raise _Bad(key, "is an empty conversation")
    out = []
    for j, turn in enumerate(turns):
        where = f"{key}[{j}]"
        if not isinstance(turn, dict):
            raise _Bad(where, f"must be an object, got {type(turn).__name__}")
        rk, ck = ("from", "value") if "from" in turn or "value" in turn else ("role", "content")
        role = _str_field(turn, rk, f"{where}.{rk}")
        if role.strip().lower() not in ROLE_ALIASES:
            raise _Bad(f"{where}.{rk}", f"has unknown role {role!r} (known: {', '.join(ROLE_ALIASES)})")
        content = _content(turn, ck, f"{where}.{ck}")
        out.append({"role": ROLE_ALIASES[role.strip().lower()], "content": content})
    return out


def _content(turn: dict, key: str, path: str) -> str:
    """A turn's text: a string, or OpenAI-style content parts ``[{"type": "text", "text": ...}, ...]`` whose text
    parts are joined with newlines (as OpenAI-compatible servers do); a non-text part (image, audio) is an error."""
    if key not in turn:
        raise _Bad(path, "is missing")
    val = turn[key]
    if not isinstance(val, list):
        return _str_field(turn, key, path)
    texts = []
    for k, part in enumerate(val):
        if not isinstance(part, dict):
            raise _Bad(
                path,
                f"must be a string, got list with a {type(part).__name__} at [{k}] (content parts are "
                '{"type": "text", "text": ...} objects)',
            )
        if part.get("type", "text") != "text":
            raise _Bad(
                f"{path}[{k}]", f"is a non-text content part (type {part.get('type')!r}); only text parts can be read"
            )
        texts.append(_str_field(part, "text", f"{path}[{k}].text"))
    return "\n".join(texts)


def _system(rec: dict) -> list[dict]:
    """Optional top-level ``system`` prompt (LLaMA-Factory style ShareGPT/Alpaca)."""
    if rec.get("system") in (None, ""):
        return []
    return [{"role": "system", "content": _str_field(rec, "system")}]


def _parse(rec: Any, fmt: _Fmt) -> tuple[list[dict] | None, str | None]:
    if fmt.name == "text":
        if isinstance(rec, str):
            return None, rec
        if not isinstance(rec, dict):
            raise _Bad(None, f"expected a JSON object or a string, got {type(rec).__name__}")
        return None, _str_field(rec, fmt.keys[0])
    if not isinstance(rec, dict):
        raise _Bad(None, f"expected a JSON object, got {type(rec).__name__}")
    if fmt.name in ("messages", "sharegpt"):
        return _system(rec) + _turns(rec, fmt.keys[0]), None
    if fmt.name == "alpaca":
        instruction = _str_field(rec, "instruction")
        inp = _str_field(rec, "input") if rec.get("input") is not None else ""
        output = _str_field(rec, "output")
        prompt = f"{instruction}\n\n{inp}" if inp.strip() else instruction
        return _system(rec) + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}], None
    q, a = fmt.keys  # qa
    return [{"role": "user", "content": _str_field(rec, q)}, {"role": "assistant", "content": _str_field(rec, a)}], None


def _detect(rec: Any, text_field: str | None) -> _Fmt | None:
    """The format a record looks like (by its keys), or None."""
    if isinstance(rec, str):
        return _Fmt("text", (text_field or "text",))
    if not isinstance(rec, dict):
        return None
    if text_field is not None:
        return _Fmt("text", (text_field,))
    for key in ("messages", "conversation"):
        if key in rec:
            return _Fmt("messages", (key,))
    if "conversations" in rec:
        return _Fmt("sharegpt", ("conversations",))
    if "instruction" in rec and "output" in rec:
        return _Fmt("alpaca")
    for pair in QA_PAIRS:
        if all(k in rec for k in pair):
            return _Fmt("qa", pair)
    if "text" in rec:
        return _Fmt("text", ("text",))
    return None


def _forced(fmt: str, rec: Any, text_field: str | None) -> _Fmt:
    """The forced format ``fmt`` with its keys taken from the first record where they vary."""
    if fmt == "text":
        return _Fmt("text", (text_field or "text",))
    if fmt == "alpaca":
        return _Fmt("alpaca")
    if fmt == "sharegpt":
        return _Fmt("sharegpt", ("conversations",))
    if fmt == "messages":
        conv = isinstance(rec, dict) and "conversation" in rec and "messages" not in rec
        return _Fmt("messages", ("conversation" if conv else "messages",))
    pair = next((p for p in QA_PAIRS if isinstance(rec, dict) and all(k in rec for k in p)), QA_PAIRS[0])
    return _Fmt("qa", pair)


# ---------------------------------------------------------------- raw streams: (record number, line or None, raw)

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
                rec = _Bad(None, f"invalid JSON ({e.msg} at column {e.colno})")
            except RecursionError:
                rec = _Bad(None, "JSON nested too deeply to read (expected a record object of fields)")
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


def _open(source: str | Path, split: str, text_split: str, config: str | None) -> tuple[str, Callable]:
    """(display name, function returning a fresh raw stream)."""
    path = Path(source)
    if path.is_dir():
        raise DataFormatError(f"{path}: is a directory; pass a .json, .jsonl, .parquet or .txt file")
    if path.is_file():
        kind = _SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataFormatError(
                f"{path.name}: unsupported file type {path.suffix!r}; supported: {', '.join(_SUFFIXES)} "
                "or a Hugging Face dataset name"
            )
        if path.stat().st_size == 0 or (kind != "parquet" and not _has_content(path)):
            raise DataFormatError(f"{path.name}: the file is empty")
        if kind == "txt":
            return path.name, functools.partial(_txt, path, text_split)
        return path.name, functools.partial({"json": _json, "jsonl": _jsonl, "parquet": _parquet}[kind], path)
    if path.suffix.lower() in _SUFFIXES or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source}: no such file")
    return str(source), functools.partial(_hf, str(source), split, config)


def _utf8_guard(name: str, stream: Iterator[RawItem]) -> Iterator[RawItem]:
    try:
        yield from stream
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _has_content(path: Path) -> bool:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return any(line.strip() for line in fh)


# ---------------------------------------------------------------- the reader


class RecordReader:
    """Iterable of :class:`Record` over a source; ``n_read``/``n_skipped``/``format`` are filled while iterating.

    ``n_read`` counts records read from the source (valid or not), ``n_skipped`` the bad records skipped with
    ``skip_bad=True`` plus empty plain texts (always skipped, never an error).
    """

    def __init__(
        self,
        source: str | Path,
        fmt: str = "auto",
        skip_bad: bool = False,
        text_field: str | None = None,
        split: str = "train",
        limit: int | None = None,
        text_split: str = "line",
        config: str | None = None,
    ):
        fmt = _FMT_ALIASES.get(fmt, fmt)
        if fmt != "auto" and fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose auto, {', '.join(FORMATS)}")
        if text_split not in _TEXT_SPLITS:
            raise ValueError(f"text_split must be one of {_TEXT_SPLITS}, got {text_split!r}")
        self.name, self._stream = _open(source, split, text_split, config)
        self.fmt, self.skip_bad, self.text_field, self.limit = fmt, skip_bad, text_field, limit
        self.n_read = self.n_skipped = 0
        self._format: str | None = None

    @property
    def format(self) -> str:
        """The (detected) format name; detected from the source's first records if not iterated yet."""
        if self._format is None:
            for _ in self._records(count=False):
                break
        return self._format or self.fmt

    def _error(self, n: int, line: int | None, bad: _Bad) -> DataFormatError:
        where = f"record {n}" + (f" (line {line})" if line is not None else "")
        what = f"field '{bad.field}' {bad.reason}" if bad.field else bad.reason
        return DataFormatError(f"{self.name}: {where}: {what}")

    def __iter__(self) -> Iterator[Record]:
        return self._records(count=True)

    def _records(self, count: bool) -> Iterator[Record]:
        stats = self if count else SimpleNamespace()
        stats.n_read = stats.n_skipped = 0
        n_out, parsed = 0, None
        for n, line, raw in _utf8_guard(self.name, self._stream()):
            if self.limit is not None and n_out >= self.limit:
                break
            stats.n_read += 1
            try:
                if isinstance(raw, _Bad):
                    raise raw
                if parsed is None:
                    parsed = self._detect(raw)
                messages, text = _parse(raw, parsed)
            except _Bad as bad:
                if not self.skip_bad:
                    raise self._error(n, line, bad) from None
                stats.n_skipped += 1
                continue
            if text is not None and not text.strip():
                stats.n_skipped += 1
                continue
            n_out += 1
            yield Record(n, messages, text)
        if n_out == 0 and self.limit != 0:
            raise DataFormatError(f"{self.name}: no valid records ({stats.n_read} read, {stats.n_skipped} skipped)")

    def _detect(self, raw: Any) -> _Fmt:
        parsed = _detect(raw, self.text_field) if self.fmt == "auto" else _forced(self.fmt, raw, self.text_field)
        if parsed is None:
            keys = ", ".join(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
            raise _Bad(None, f"unknown format (keys: {keys}); expected {_KNOWN}")
        self._format = parsed.name
        return parsed


def read_records(
    source: str | Path,
    fmt: str = "auto",
    skip_bad: bool = False,
    text_field: str | None = None,
    split: str = "train",
    limit: int | None = None,
    text_split: str = "line",
    config: str | None = None,
) -> RecordReader:
    """Records of a local file or Hugging Face dataset (``split``/``config`` for datasets).

    ``fmt``: ``auto`` or one of :data:`FORMATS`. ``text_field``: the text column (implies ``fmt="text"`` under auto).
    ``text_split`` (``.txt``): ``line`` (one document per non-blank line), ``blank_line`` (paragraphs), ``whole``.
    ``limit``: stop after that many valid records. Bad records raise :class:`DataFormatError` unless ``skip_bad``.
    """
    return RecordReader(source, fmt, skip_bad, text_field, split, limit, text_split, config)


class RecordSplit(NamedTuple):
    train: list[Record]
    heldout: list[Record]


def split_records(records: Iterable[Record], holdout: int | float, seed: int = 0) -> RecordSplit:
    """Hold out ``holdout`` records (a count, or a fraction if float < 1) chosen by ``seed``; order is kept."""
    records = list(records)
    n = round(holdout * len(records)) if isinstance(holdout, float) and holdout < 1 else int(holdout)
    if not 0 <= n <= len(records):
        raise ValueError(f"cannot hold out {holdout} of {len(records)} records")
    held = set(random.Random(seed).sample(range(len(records)), n))
    parts: tuple[list[Record], list[Record]] = ([], [])
    for i, r in enumerate(records):
        parts[i in held].append(r)
    return RecordSplit(*parts)
