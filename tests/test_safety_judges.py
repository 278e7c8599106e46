"""Judges that misbehave: a server that trickles bytes meets one overall deadline per attempt, huge answers are cut
and flagged, and an autointerp run whose requests all fail exits 1 with one summary line."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from chatsae.cli import main
from chatsae.interp.autointerp import AutointerpConfig, failure_summary, run_autointerp
from chatsae.interp.judges import MAX_ANSWER_CHARS, CachedJudge, OpenAIJudge, ask, is_truncated
from chatsae.interp.prompts import parse_fast
from chatsae.interp.server import JudgeServer

pytestmark = pytest.mark.usefixtures("single_thread")


def _reply(content: str) -> bytes:
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }
    return json.dumps(body).encode()


def _read_request(conn: socket.socket) -> None:
    """Read one HTTP request (headers and Content-Length body), so that closing the socket resets nothing."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = [int(v) for k, _, v in (x.partition(b":") for x in head.split(b"\r\n")) if k.lower() == b"content-length"]
    while len(body) < (length[0] if length else 0):
        body += conn.recv(65536)


class TrickleServer:
    """A raw HTTP server on 127.0.0.1: answers every request with ``head`` at once, then ``body`` one byte per
    ``interval`` seconds (``trickle_head``: the headers trickle too)."""

    def __init__(self, body: bytes, trickle_head: bool = False, interval: float = 1.0) -> None:
        self.body, self.trickle_head, self.interval = body, trickle_head, interval
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(self.body)
        try:
            _read_request(conn)
            if not self.trickle_head:
                conn.sendall(head)
            if not self.interval:
                conn.sendall(self.body)
                return
            for b in (head if self.trickle_head else b"") + self.body:
                if self.stop.is_set():
                    break
                conn.sendall(bytes([b]))
                time.sleep(self.interval)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("trickle_head", [False, True])
def test_a_trickling_server_meets_one_overall_deadline(trickle_head):
    server = TrickleServer(_reply("[[3]]"), trickle_head=trickle_head)
    try:
        judge = OpenAIJudge("m", base_url=server.url, api_key="k", timeout=2, max_retries=0)
        t0 = time.monotonic()
        ans = ask(judge, [{"role": "user", "content": "x"}], parse_fast, attempts=1)
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    assert ans.status == "error" and "Timeout" in ans.raw[0], ans.raw
    assert elapsed < 4.5, f"the request ran {elapsed:.1f}s with --timeout 2"  # before: until the body ended (~200 s)


def test_a_fast_server_still_answers_within_the_deadline():
    server = TrickleServer(_reply("ok"), interval=0.0)
    try:
        judge = OpenAIJudge("m", base_url=server.url, api_key="k", timeout=5, max_retries=0)
        assert judge.complete([{"role": "user", "content": "x"}]) == "ok"
    finally:
        server.close()


class _Huge:
    name = "huge"

    def __init__(self, n: int) -> None:
        self.n = n

    def complete(self, messages, temperature=0.0, max_tokens=512, seed=None):
        return "a" * self.n


def test_a_huge_answer_is_stored_truncated_and_flagged(tmp_path):
    n = MAX_ANSWER_CHARS + 500_000
    with JudgeServer(_Huge(n)) as server:
        judge = CachedJudge(OpenAIJudge("m", base_url=server.url, api_key="k", max_retries=0), tmp_path / "cache")
        text = judge.complete([{"role": "user", "content": "x"}])
    assert is_truncated(text) and text.startswith("a" * MAX_ANSWER_CHARS) and len(text) < MAX_ANSWER_CHARS + 200
    assert f"{n:,} characters" in text
    (entry,) = [json.loads(p.read_text()) for p in Path(tmp_path / "cache").rglob("*.json")]
    assert entry["truncated"] is True and entry["answer"] == text
    assert not is_truncated("short") and not is_truncated("a" * MAX_ANSWER_CHARS)


def test_a_body_without_end_is_refused_at_the_size_cap():
    import httpx

    from chatsae.interp.transport import DeadlineTransport

    server = TrickleServer(b"x" * 300_000, interval=0.0)
    try:
        client = httpx.Client(transport=DeadlineTransport(timeout=10, max_bytes=100_000))
        with pytest.raises(httpx.ReadError, match="passed 100,000 bytes"):
            client.get(server.url)
    finally:
        server.close()


class _Down:
    name = "down"

    def complete(self, messages, temperature=0.0, max_tokens=512, seed=None):
        raise ConnectionError("connection refused by 127.0.0.1:9")


def test_all_requests_failing_is_reported(interp_features, tmp_path):
    data = interp_features[0]
    cfg = AutointerpConfig(n_latents=3, attempts=1, out=str(tmp_path / "a.json"))
    doc = run_autointerp(data, _Down(), cfg, progress=False)
    msg = failure_summary(doc)
    assert msg and msg.startswith("3 of 3 judgements (100%) got no answer") and "connection refused" in msg


def test_cli_autointerp_exits_1_when_every_request_fails(interp_features, tmp_path, capsys):
    fdir = interp_features[0].root
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}/v1"
    port.close()  # nothing listens here
    out = tmp_path / "auto.json"
    rc = main(
        ["autointerp", str(fdir), "--judge", "openai", "--base-url", url, "--n-latents", "2", "--attempts", "1"]
        + ["--http-retries", "0", "--cache-dir", "none", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 1
    (line,) = [x for x in err.splitlines() if "FAILED" in x]
    assert line.startswith("chatsae autointerp: FAILED: 2 of 2 judgements (100%) got no answer") and out.is_file()


def test_a_local_judge_meets_one_overall_deadline(tiny_llama):
    """A local judge whose generation is slow (0.3 s per token here) stops at --timeout and fails the request, as the
    HTTP judge does; a request within the deadline answers as before."""
    from chatsae.interp.judges import JudgeConfig, LocalJudge, make_judge

    model, tokenizer = tiny_llama
    slow = model.register_forward_hook(lambda *a: time.sleep(0.3))
    try:
        judge = LocalJudge("tiny", model_obj=model, tokenizer=tokenizer, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(
            TimeoutError, match=r"local judge: no answer within 0.5 s \(stopped after \d+ of 200 tokens"
        ):
            judge.complete([{"role": "user", "content": "Name this latent."}], max_tokens=200)
        assert time.monotonic() - t0 < 3  # 200 tokens would take 60 s
        answer = ask(judge, [{"role": "user", "content": "Name this latent."}], parse_fast, attempts=1, max_tokens=200)
        assert answer.status == "error" and "no answer within 0.5 s" in answer.raw[0]
    finally:
        slow.remove()
    assert isinstance(
        LocalJudge("tiny", model_obj=model, tokenizer=tokenizer, timeout=60).complete(
            [{"role": "user", "content": "hi"}], max_tokens=3
        ),
        str,
    )
    assert make_judge(JudgeConfig(timeout=7), default_cache="none").timeout == 7  # --timeout reaches the local judge
