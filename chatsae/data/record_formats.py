"""The record formats: chat ``messages``, ShareGPT, Alpaca, Q/A pairs and plain text; detecting which one a record
has (by its keys) or taking a forced one, and parsing one record into normalised messages or a text. Problems in a
record are :class:`BadRecord` (field path + reason) until the reader names the file and record number in a
:class:`DataFormatError`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
FORMAT_ALIASES = {"chat": "messages", "openai": "messages", "conversation": "messages", "gsm8k": "qa", "txt": "text"}
FORMAT_NAMES = ("auto", *FORMATS, *FORMAT_ALIASES)
"""Every accepted ``fmt`` / ``--data-format`` value."""
QA_PAIRS = (("question", "answer"), ("prompt", "response"), ("prompt", "completion"))
KNOWN_FORMATS = (
    "messages/conversation (chat), conversations (ShareGPT), instruction+output (Alpaca), "
    "question+answer / prompt+response / prompt+completion (Q/A), text (plain text; or pass text_field=)"
)
"""The formats' keys, as the unknown-format error lists them."""


class DataFormatError(ValueError):
    """A malformed source or record; the message names the file, the record number and the field."""


class BadRecord(Exception):
    """A record-level problem (field path + reason), turned into a DataFormatError with file and record."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


@dataclass(frozen=True)
class DetectedFormat:
    """A format with the keys it reads in this source."""

    name: str
    keys: tuple[str, ...] = ()  # messages key / Q-A key pair / text field


def _str_field(rec: dict, key: str, path: str | None = None) -> str:
    path = path or key
    if key not in rec:
        raise BadRecord(path, "is missing")
    val = rec[key]
    if not isinstance(val, str):
        raise BadRecord(path, f"must be a string, got {type(val).__name__}")
    return val


def _turns(rec: dict, key: str) -> list[dict]:
    """Parse a list of turns (``role``/``content`` or ``from``/``value``) into normalised messages."""
    if key not in rec:
        raise BadRecord(key, "is missing")
    turns = rec[key]
    if not isinstance(turns, list):
        raise BadRecord(key, f"must be a list of turns, got {type(turns).__name__}")
    if not turns:
        raise BadRecord(key, "is an empty conversation")
    out = []
    for j, turn in enumerate(turns):
        where = f"{key}[{j}]"
        if not isinstance(turn, dict):
            raise BadRecord(where, f"must be an object, got {type(turn).__name__}")
        rk, ck = ("from", "value") if "from" in turn or "value" in turn else ("role", "content")
        role = _str_field(turn, rk, f"{where}.{rk}")
        if role.strip().lower() not in ROLE_ALIASES:
            raise BadRecord(f"{where}.{rk}", f"has unknown role {role!r} (known: {', '.join(ROLE_ALIASES)})")
        content = _content(turn, ck, f"{where}.{ck}")
        out.append({"role": ROLE_ALIASES[role.strip().lower()], "content": content})
    return out


def _content(turn: dict, key: str, path: str) -> str:
    """A turn's text: a string, or OpenAI-style content parts ``[{"type": "text", "text": ...}, ...]`` whose text
    parts are joined with newlines (as OpenAI-compatible servers do); a non-text part (image, audio) is an error."""
    if key not in turn:
        raise BadRecord(path, "is missing")
    val = turn[key]
    if not isinstance(val, list):
        return _str_field(turn, key, path)
    texts = []
    for k, part in enumerate(val):
        if not isinstance(part, dict):
            raise BadRecord(
                path,
                f"must be a string, got list with a {type(part).__name__} at [{k}] (content parts are "
                '{"type": "text", "text": ...} objects)',
            )
        if part.get("type", "text") != "text":
            raise BadRecord(
                f"{path}[{k}]", f"is a non-text content part (type {part.get('type')!r}); only text parts can be read"
            )
        texts.append(_str_field(part, "text", f"{path}[{k}].text"))
    return "\n".join(texts)


def _system(rec: dict) -> list[dict]:
    """Optional top-level ``system`` prompt (LLaMA-Factory style ShareGPT/Alpaca)."""
    if rec.get("system") in (None, ""):
        return []
    return [{"role": "system", "content": _str_field(rec, "system")}]


def parse_record(rec: Any, fmt: DetectedFormat) -> tuple[list[dict] | None, str | None]:
    if fmt.name == "text":
        if isinstance(rec, str):
            return None, rec
        if not isinstance(rec, dict):
            raise BadRecord(None, f"expected a JSON object or a string, got {type(rec).__name__}")
        return None, _str_field(rec, fmt.keys[0])
    if not isinstance(rec, dict):
        raise BadRecord(None, f"expected a JSON object, got {type(rec).__name__}")
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


def detect_format(rec: Any, text_field: str | None) -> DetectedFormat | None:
    """The format a record looks like (by its keys), or None."""
    if isinstance(rec, str):
        return DetectedFormat("text", (text_field or "text",))
    if not isinstance(rec, dict):
        return None
    if text_field is not None:
        return DetectedFormat("text", (text_field,))
    for key in ("messages", "conversation"):
        if key in rec:
            return DetectedFormat("messages", (key,))
    if "conversations" in rec:
        return DetectedFormat("sharegpt", ("conversations",))
    if "instruction" in rec and "output" in rec:
        return DetectedFormat("alpaca")
    for pair in QA_PAIRS:
        if all(k in rec for k in pair):
            return DetectedFormat("qa", pair)
    if "text" in rec:
        return DetectedFormat("text", ("text",))
    return None


def forced_format(fmt: str, rec: Any, text_field: str | None) -> DetectedFormat:
    """The forced format ``fmt`` with its keys taken from the first record where they vary."""
    if fmt == "text":
        return DetectedFormat("text", (text_field or "text",))
    if fmt == "alpaca":
        return DetectedFormat("alpaca")
    if fmt == "sharegpt":
        return DetectedFormat("sharegpt", ("conversations",))
    if fmt == "messages":
        conv = isinstance(rec, dict) and "conversation" in rec and "messages" not in rec
        return DetectedFormat("messages", ("conversation" if conv else "messages",))
    pair = next((p for p in QA_PAIRS if isinstance(rec, dict) and all(k in rec for k in p)), QA_PAIRS[0])
    return DetectedFormat("qa", pair)
