"""A minimal OpenAI-compatible chat server (``POST /v1/chat/completions``, ``GET /v1/models``) over any judge.

Serves a local transformers model to tools that speak the OpenAI API (``chatsae serve-judge``), and gives the tests
a real HTTP endpoint for the ``openai`` client. Standard library only; binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .judges import Judge


class JudgeServer:
    """``JudgeServer(judge).start()`` serves in a background thread; ``url`` is the base URL (``.../v1``)."""

    def __init__(self, judge: Judge, host: str = "127.0.0.1", port: int = 0, model_name: str | None = None) -> None:
        self.judge = judge
        self.model_name = model_name or judge.name
        self.n_requests = 0
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        assert isinstance(host, str)  # a TCP server's address: (host, port), host from getsockname()
        return f"http://{host}:{port}/v1"

    def start(self) -> JudgeServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="judge-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        """The chat.completion object for a request body."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
            raise ValueError("'messages' must be a list of {role, content} objects")
        text = self.judge.complete(
            [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in messages],
            temperature=float(body.get("temperature") or 0.0),
            max_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 512),
            seed=body.get("seed"),
        )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }


def _handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str, kind: str) -> None:
            self._send(code, {"error": {"message": message, "type": kind, "code": code}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": server.model_name, "object": "model"}]})
            else:
                self._error(404, f"no route {self.path}", "not_found")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route {self.path}", "not_found")
                return
            with server._lock:
                server.n_requests += 1
            try:
                body = json.loads(raw or b"{}")
            except json.JSONDecodeError as e:
                self._error(400, f"invalid JSON body: {e}", "invalid_request_error")
                return
            if body.get("stream"):
                self._error(400, "streaming is not supported", "invalid_request_error")
                return
            try:
                self._send(200, server.answer(body))
            except ValueError as e:
                self._error(400, str(e), "invalid_request_error")
            except Exception as e:  # noqa: BLE001 - report any judge failure as a server error
                self._error(500, f"{type(e).__name__}: {e}", "server_error")

    return Handler
