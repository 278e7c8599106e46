"""The HTTP transport of the OpenAI judge: one overall deadline per HTTP attempt and a cap on the response size.

The ``httpx`` timeouts of the ``openai`` client bound each socket operation: a server that sends one byte per second
keeps a request alive for ever. :class:`DeadlineTransport` gives every attempt (connect, sending, headers and body)
one deadline, ``timeout`` seconds after it starts: each socket read waits at most until then, and a read after it
fails with ``httpx.ReadTimeout`` (the client retries it as any timeout, ``--http-retries`` times). A response body
over ``max_bytes`` fails with :class:`ResponseTooLarge` once that many bytes have come, so a server streaming
without end cannot fill the memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest HTTP response body read from a judge endpoint (an answer is capped at ``judges.MAX_ANSWER_CHARS``; its
JSON envelope and escapes can make the body several times larger)."""

_DEADLINE = threading.local()
"""``_DEADLINE.at``: monotonic time when the current thread's HTTP attempt must end (None: no deadline)."""


class ResponseTooLarge(httpx.ReadError):
    """The response body passed ``MAX_BODY_BYTES``."""


def _remaining(timeout: float | None) -> float | None:
    """``timeout`` shortened to the time left before the current attempt's deadline; ReadTimeout once it passed."""
    at = getattr(_DEADLINE, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the request ran past its overall deadline (--timeout)")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose reads and writes end at the current attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _remaining(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _remaining(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, _remaining(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """``httpcore.SyncBackend`` whose connections and streams keep the current attempt's deadline."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self.inner.connect_tcp(host, port, _remaining(timeout), local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self.inner.connect_unix_socket(path, _remaining(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def _as_httpx(e: httpcore.TimeoutException | httpcore.NetworkError | httpcore.ProtocolError) -> Exception:
    """The ``httpx`` exception of the same name (what the ``openai`` client retries on)."""
    cls = getattr(httpx, type(e).__name__, httpx.TransportError)
    return cls(str(e) or type(e).__name__)


class _Body(httpx.SyncByteStream):
    """A response body that ends at the attempt's deadline and at ``max_bytes``."""

    def __init__(self, inner: Any, at: float, max_bytes: int) -> None:
        self.inner, self.at, self.max_bytes = inner, at, max_bytes

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        _DEADLINE.at = self.at  # the body may be read after handle_request returned
        try:
            for chunk in self.inner:
                seen += len(chunk)
                if seen > self.max_bytes:
                    raise ResponseTooLarge(f"the judge's response passed {self.max_bytes:,} bytes; refused")
                yield chunk
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as e:
            raise _as_httpx(e) from e
        finally:
            _DEADLINE.at = None

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()


class DeadlineTransport(httpx.BaseTransport):
    """An ``httpx`` transport (pass it as ``httpx.Client(transport=...)``) with one ``timeout``-second deadline per
    attempt and at most ``max_bytes`` of response body (module docstring)."""

    def __init__(self, timeout: float, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.timeout, self.max_bytes = timeout, max_bytes
        self.pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), network_backend=_DeadlineBackend())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        at = time.monotonic() + self.timeout
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        _DEADLINE.at = at
        try:
            resp = self.pool.handle_request(req)
        except (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError) as e:
            raise _as_httpx(e) from e
        finally:
            _DEADLINE.at = None
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_Body(resp.stream, at, self.max_bytes),
            extensions=resp.extensions,
        )

    def close(self) -> None:
        self.pool.close()
