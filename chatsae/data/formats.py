"""Reading training records: chat ``messages``, ShareGPT, Alpaca, Q/A pairs and plain text.

Sources: local ``.json`` (a list of records, or JSON lines), ``.jsonl``/``.ndjson``, ``.parquet`` (needs pyarrow),
``.txt``, or a Hugging Face ``datasets`` name. The format is detected from the first valid record or forced with
``fmt=``. Record numbers in error messages are 0-based positions in the source (``record 17`` is ``data[17]`` of a
JSON list); JSONL errors also give the 1-based line. JSONL, txt and Parquet are streamed.

The formats and the parsing of one record are in :mod:`chatsae.data.record_formats`, the raw streams of each kind of
source in :mod:`chatsae.data.record_sources`; the names used elsewhere are re-exported here.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

from .record_formats import (
    FORMAT_ALIASES,
    FORMAT_NAMES,
    FORMATS,
    KNOWN_FORMATS,
    QA_PAIRS,
    ROLE_ALIASES,
    BadRecord,
    DataFormatError,
    DetectedFormat,
    detect_format,
    forced_format,
    parse_record,
)
from .record_sources import TEXT_SPLITS, open_source, utf8_guard

__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "QA_PAIRS",
    "ROLE_ALIASES",
    "DataFormatError",
    "Record",
    "RecordReader",
    "RecordSplit",
    "read_records",
    "split_records",
]


class Record(NamedTuple):
    """One sample: ``messages`` (list of ``{"role", "content"}``) for chat formats, ``text`` for plain text."""

    index: int  # type: ignore[assignment]  # a field named like tuple.index (shadowing it is intended)
    messages: list[dict] | None
    text: str | None


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
        fmt = FORMAT_ALIASES.get(fmt, fmt)
        if fmt != "auto" and fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose auto, {', '.join(FORMATS)}")
        if text_split not in TEXT_SPLITS:
            raise ValueError(f"text_split must be one of {TEXT_SPLITS}, got {text_split!r}")
        self.name, self._stream = open_source(source, split, text_split, config)
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

    def _error(self, n: int, line: int | None, bad: BadRecord) -> DataFormatError:
        where = f"record {n}" + (f" (line {line})" if line is not None else "")
        what = f"field '{bad.field}' {bad.reason}" if bad.field else bad.reason
        return DataFormatError(f"{self.name}: {where}: {what}")

    def __iter__(self) -> Iterator[Record]:
        return self._records(count=True)

    def _records(self, count: bool) -> Iterator[Record]:
        stats = self if count else SimpleNamespace()
        stats.n_read = stats.n_skipped = 0
        n_out, parsed = 0, None
        for n, line, raw in utf8_guard(self.name, self._stream()):
            if self.limit is not None and n_out >= self.limit:
                break
            stats.n_read += 1
            try:
                if isinstance(raw, BadRecord):
                    raise raw
                if parsed is None:
                    parsed = self._detect(raw)
                messages, text = parse_record(raw, parsed)
            except BadRecord as bad:
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

    def _detect(self, raw: Any) -> DetectedFormat:
        parsed = (
            detect_format(raw, self.text_field) if self.fmt == "auto" else forced_format(self.fmt, raw, self.text_field)
        )
        if parsed is None:
            keys = ", ".join(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
            raise BadRecord(None, f"unknown format (keys: {keys}); expected {KNOWN_FORMATS}")
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
