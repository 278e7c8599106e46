"""Credentials in URLs and in any encoding chatsae can detect never reach a file or a printed line."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import quote

import pytest

from chatsae.core.redact import MASK, redact, redact_url, register_secret, register_url
from chatsae.interp.autointerp import AutointerpConfig, run_autointerp
from chatsae.interp.judges import CachedJudge, OpenAIJudge
from chatsae.interp.server import JudgeServer

pytestmark = pytest.mark.usefixtures("single_thread")


def test_url_user_info_and_query_tokens_are_redacted():
    text = (
        "POST http://alice:Pa55-word-9@127.0.0.1:8000/v1/chat failed; retry https://tok9f8e7d6c@h.example/v1 "
        "and https://h.example/v1?key=AIzaXYZ123&api-version=2024-02-01&token=t0k3n&sig=abc%2Fdef"
    )
    out = redact(text)
    for secret in ("alice:Pa55-word-9", "tok9f8e7d6c", "AIzaXYZ123", "t0k3n", "abc%2Fdef"):
        assert secret not in out, secret
    assert f"http://{MASK}@127.0.0.1:8000/v1/chat" in out and "api-version=2024-02-01" in out
    assert redact_url("http://u:p4ssw0rd@h/v1") == f"http://{MASK}@h/v1"
    assert redact("see http://127.0.0.1:8000/v1 or mail a@b.org") == "see http://127.0.0.1:8000/v1 or mail a@b.org"


def test_a_registered_secret_is_redacted_in_its_encodings():
    key = "k3y/with+odd=chars&more"
    register_secret(key, user="bob")
    encodings = [
        key,
        json.dumps(key)[1:-1],
        quote(key, safe=""),
        base64.b64encode(key.encode()).decode(),
        base64.urlsafe_b64encode(key.encode()).decode().rstrip("="),
        base64.b64encode(f"bob:{key}".encode()).decode(),  # HTTP Basic auth
    ]
    for form in encodings:
        assert form not in redact(f"echo: {form} end"), form
    assert redact("Authorization: Basic Ym9iOnNlY3JldHBhc3M=") == f"Authorization: Basic {MASK}"


def test_register_url_registers_the_password_decoded():
    register_url("https://carol:p%40ss%3Aw0rd!@judge.example/v1?access_token=zz-77-yy")
    out = redact("the server said: bad password p@ss:w0rd! (token zz-77-yy)")
    assert "p@ss:w0rd!" not in out and "zz-77-yy" not in out
    assert base64.b64encode(b"carol:p@ss:w0rd!").decode() not in redact(base64.b64encode(b"carol:p@ss:w0rd!").decode())


class _Echo:
    name = "echo"

    def complete(self, messages, temperature=0.0, max_tokens=512, seed=None):
        return "My final verdict score is: [[4]], feature name is [[x]]"


def test_a_password_in_base_url_reaches_no_file(interp_features, tmp_path):
    data = interp_features[0]
    password = "hunter2-Secret-77"
    with JudgeServer(_Echo()) as server:
        url = server.url.replace("http://", f"http://judge:{password}@")
        judge = CachedJudge(OpenAIJudge("m", base_url=url, api_key="plain-key-123456", max_retries=0), tmp_path / "c")
        cfg = AutointerpConfig(n_latents=2, attempts=1, out=str(tmp_path / "autointerp.json"))
        doc = run_autointerp(data, judge, cfg, progress=False)
    assert doc["summary"]["fast"]["n_scored"] == 2  # the requests went through
    written = [p.read_text() for p in Path(tmp_path).rglob("*.json")]
    assert len(written) == 3  # autointerp.json and two cache entries
    basic = base64.b64encode(f"judge:{password}".encode()).decode()
    for text in written:
        assert password not in text and quote(password) not in text and basic not in text
    assert f"openai:http://{MASK}@127.0.0.1" in written[0] or any(f"http://{MASK}@" in t for t in written)
    assert password not in judge.name
