"""Keeping secrets (API keys, tokens) out of everything chatsae writes or prints.

:func:`register_secret` records a value known to be secret (the judge's API key); :func:`redact` replaces those
values and anything shaped like a credential (``sk-...`` keys, ``Bearer ...`` tokens, ``api_key=...``) with
``[REDACTED]``. Endpoints may echo the key in their error text, which autointerp stores with each answer.
"""

from __future__ import annotations

import json
import re
import threading

MASK = "[REDACTED]"
_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),  # OpenAI-style keys: sk-..., sk-proj-...
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]{6,}"),
    re.compile(
        r"(?i)(\b(?:api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)[\"']?\s*[:=]\s*"
        r"[\"']?)[^\s\"'&,;}]{4,}"
    ),
)


def register_secret(value: str | None) -> None:
    """Remember ``value`` (at least 6 characters) so that :func:`redact` removes it wherever it appears."""
    if value and len(value) >= 6:
        with _LOCK:
            _SECRETS.add(value)
            escaped = json.dumps(value)[1:-1]  # its form inside JSON text, if it has characters JSON escapes
            _SECRETS.add(escaped)


def redact(text: str) -> str:
    """``text`` with registered secrets and credential-shaped substrings replaced by ``[REDACTED]``."""
    with _LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text
