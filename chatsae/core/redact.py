"""Keeping secrets (API keys, tokens) out of everything chatsae writes or prints.

:func:`register_secret` records a value known to be secret (the judge's API key); :func:`redact` replaces those
values and anything shaped like a credential (``sk-...`` keys, ``Bearer``/``Basic`` tokens, ``api_key=...``, the
user-info of a URL ``scheme://user:PASS@host``, query parameters such as ``?key=``/``?token=``/``&sig=``) with
``[REDACTED]``. A registered secret is also removed in the encodings it may travel in: JSON-escaped, URL-encoded
(``quote``/``quote_plus``) and base64 (of the value, and of ``user:value`` for HTTP Basic auth). Endpoints may echo
the key in their error text, which autointerp stores with each answer. :func:`redact_url` is the URL without its
credentials (for names that go into files, e.g. the judge's name).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK = "[REDACTED]"
_SECRETS: set[str] = set()
_LOCK = threading.Lock()
_QUERY_NAMES = (
    r"key|api[_-]?key|apikey|token|access[_-]?token|auth|password|passwd|pwd|secret|client[_-]?secret|sig|signature|"
    r"code|session"
)
"""Names of URL query parameters whose values are credentials (``?key=...``, ``&sig=...``)."""
_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),  # OpenAI-style keys: sk-..., sk-proj-...
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=\-]{6,}"),
    re.compile(r"(?i)(\bbasic\s+)[A-Za-z0-9+/]{6,}={0,2}"),  # HTTP Basic auth: base64 of user:password
    re.compile(
        r"(?i)(\b(?:api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)[\"']?\s*[:=]\s*"
        r"[\"']?)[^\s\"'&,;}]{4,}"
    ),
    re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://)[^/?#\s@\"'<>]+(?=@)"),  # URL user-info: scheme://user:pass@host
    re.compile(rf"(?i)([?&;](?:{_QUERY_NAMES})=)[^&#\s\"'<>]+"),  # URL query credentials: ?key=..., &sig=...
)


def _b64(text: str) -> set[str]:
    """The base64 forms of ``text`` (padded and unpadded, standard and URL-safe alphabets)."""
    raw = text.encode()
    forms = {base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    return forms | {f.rstrip("=") for f in forms}


def _encodings(value: str) -> set[str]:
    """``value`` as it may appear in text chatsae writes: plain, JSON-escaped, URL-encoded and base64."""
    forms = {value, json.dumps(value)[1:-1], quote(value, safe=""), quote_plus(value, safe="")} | _b64(value)
    return {f for f in forms if len(f) >= 6}


def register_secret(value: str | None, user: str | None = None) -> None:
    """Remember ``value`` (at least 6 characters) so that :func:`redact` removes it wherever it appears, in any of
    the encodings of the module docstring; ``user``: also base64 of ``user:value`` (HTTP Basic auth)."""
    if not value or len(value) < 6:
        return
    forms = _encodings(value)
    if user is not None:
        forms |= _b64(f"{user}:{value}")
    with _LOCK:
        _SECRETS.update(forms)


def register_url(url: str | None) -> None:
    """Register the credentials a URL carries: the password (or lone user token) of its user-info and the values of
    its credential query parameters (:data:`_QUERY_NAMES`), decoded and as written."""
    if not url:
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password is not None:
        for pw in {parts.password, unquote(parts.password)}:
            register_secret(pw, user=unquote(parts.username or ""))
    elif parts.username:
        register_secret(parts.username)
        register_secret(unquote(parts.username))
    for pair in re.split(r"[&;]", parts.query):
        name, _, value = pair.partition("=")
        if not re.fullmatch(_QUERY_NAMES, name, flags=re.IGNORECASE):
            continue
        register_secret(value)
        register_secret(unquote(value))


def redact_url(url: str) -> str:
    """``url`` without credentials: user-info and credential-like query values replaced by ``[REDACTED]``."""
    return redact(url)


def redact(text: str) -> str:
    """``text`` with registered secrets and credential-shaped substrings replaced by ``[REDACTED]``."""
    with _LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text
