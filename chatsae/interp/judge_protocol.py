"""What every judge is and what every answer goes through: the :class:`Judge` protocol (``name``, ``prefills``,
``complete``) and the cap on an answer's length (:func:`cap_answer`, :func:`is_truncated`)."""

from __future__ import annotations

import re
from typing import Protocol

from .prompts import Messages

MAX_ANSWER_CHARS = 1_000_000
"""Longest answer kept from a judge: a longer one is cut here and flagged (see :func:`cap_answer`)."""
_TRUNCATED = re.compile(r"\n\[chatsae: answer truncated: [\d,]+ characters, the first [\d,]+ kept\]$")


class Judge(Protocol):
    name: str
    prefills: bool
    """True if a trailing ``assistant`` message is continued: ``complete`` then returns only the continuation."""

    def complete(
        self, messages: Messages, temperature: float = 0.0, max_tokens: int = 512, seed: int | None = None
    ) -> str: ...


def cap_answer(text: str, limit: int = MAX_ANSWER_CHARS) -> str:
    """``text``, or its first ``limit`` characters followed by a line saying it was truncated (idempotent)."""
    if len(text) <= limit or is_truncated(text):
        return text
    return f"{text[:limit]}\n[chatsae: answer truncated: {len(text):,} characters, the first {limit:,} kept]"


def is_truncated(text: str) -> bool:
    """Whether :func:`cap_answer` cut ``text``."""
    return _TRUNCATED.search(text[-200:]) is not None
