"""Judges over real HTTP: the `openai` client against a local OpenAI-compatible server process, retries of malformed
answers and of failed requests, the on-disk cache, rate limiting, the local transformers judge."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from chatsae.interp.autointerp import AutointerpConfig, run_autointerp
from chatsae.interp.judges import CachedJudge, JudgeConfig, LocalJudge, OpenAIJudge, RateLimiter, ask, make_judge
from chatsae.interp.prompts import PREFILL, parse_fast
from chatsae.interp.server import JudgeServer

pytestmark = pytest.mark.usefixtures("single_thread")


class ScriptedJudge:
    """Deterministic answers by prompt kind; the first (temperature 0) FAST answer is malformed, retries are fine.

    Detection/fuzzing: answers 1 for every excerpt, so the expected confusion counts follow from the labels alone.
    """

    name = "scripted"

    def __init__(self, fail_first_request: bool = False) -> None:
        self.calls: list[dict] = []
        self.fail_first_request = fail_first_request
        self._lock = threading.Lock()

    def complete(self, messages, temperature=0.0, max_tokens=512, seed=None):
        with self._lock:
            self.calls.append({"temperature": temperature, "seed": seed})
            if self.fail_first_request and len(self.calls) == 1:
                raise RuntimeError("backend overloaded")
        text = messages[-1]["content"]
        if "final verdict" in text:
            if temperature == 0.0:
                return "This latent is about chat turns, I would say four."  # malformed: no [[..]]
            n = text.count("Example ")
            return f"Reasoning.\nMy final verdict score is: [[{n % 5 + 1}]], feature name is [[turn starts]]"
        if "What does the latent detect" in text:
            return "It fires on template tokens. [[chat template tokens]]"
        n = len(re.findall(r"^Example \d+:", text, re.M))
        return "[[" + ", ".join(["1"] * n) + "]]"


def test_openai_client_over_http_with_parse_retries(tmp_path):
    judge = ScriptedJudge()
    with JudgeServer(judge) as server:
        client = OpenAIJudge("scripted-model", base_url=server.url, api_key_env="CHATSAE_TEST_NO_SUCH_KEY")
        messages = [{"role": "user", "content": "Example 1: a\nMy final verdict score is: [[S]]"}]
        ans = ask(client, messages, parse_fast, attempts=3)
        assert ans.status == "ok" and ans.value == (2, "turn starts")
        assert len(ans.raw) == 2 and "four" in ans.raw[0]
        assert server.n_requests == 2
        assert judge.calls == [{"temperature": 0.0, "seed": None}, {"temperature": 0.7, "seed": 1}]
        # every attempt malformed -> recorded as unparseable, no exception
        ans = ask(client, messages, parse_fast, attempts=1)
        assert ans.status == "unparseable" and ans.value is None and len(ans.raw) == 1


def test_failed_requests_are_retried_by_the_client_and_recorded_when_hopeless(tmp_path):
    judge = ScriptedJudge(fail_first_request=True)
    with JudgeServer(judge) as server:
        client = OpenAIJudge("m", base_url=server.url, max_retries=2, api_key="k")
        text = client.complete([{"role": "user", "content": "What does the latent detect?"}])
        assert text.endswith("[[chat template tokens]]")
        assert server.n_requests == 2  # HTTP 500, then the client's retry succeeded
    dead = OpenAIJudge("m", base_url=server.url, max_retries=0, timeout=2, api_key="k")  # server closed
    ans = ask(dead, [{"role": "user", "content": "x"}], parse_fast, attempts=2)
    assert ans.status == "error" and all(r.startswith("error: ") for r in ans.raw) and len(ans.raw) == 2


def test_autointerp_over_http_concurrent_and_cached(interp_features, tmp_path):
    data = interp_features[0]
    judge = ScriptedJudge()
    cfg = AutointerpConfig(
        protocol="all", n_latents=6, n_examples=3, n_test=4, test_batch=3, out=str(tmp_path / "autointerp.json")
    )
    with JudgeServer(judge) as server:
        cached = CachedJudge(OpenAIJudge("scripted-model", base_url=server.url, api_key="k"), tmp_path / "cache")
        doc = run_autointerp(data, cached, cfg, concurrency=4, progress=False)
        n_http = server.n_requests
        assert n_http == cached.misses > 0 and cached.hits == 0
        latents = doc["latents"]
        assert len(latents) == 6
        for j, r in latents.items():
            n_top = len(data.contexts(int(j), "top")[:3])
            assert r["fast"]["status"] == "ok" and r["fast"]["score"] == n_top % 5 + 1
            assert r["fast"]["name"] == "turn starts" and len(r["fast"]["raw"]) == 2
            assert r["explanation"]["text"] == "chat template tokens"
            det = r["detection"]
            if det["status"] == "insufficient":
                continue
            pos, neg = det["tp"] + det["fn"], det["fp"] + det["tn"]
            assert (det["fn"], det["tn"]) == (0, 0)  # the judge said 1 to everything
            assert det["recall"] == 1.0 and det["balanced_accuracy"] == 0.5
            assert det["precision"] == pytest.approx(pos / (pos + neg))
        for name in ("detection", "fuzzing"):  # the scoring path ran for most latents
            assert sum(r[name]["status"] == "ok" for r in latents.values()) >= 3
        for r in latents.values():
            if r["fuzzing"]["status"] == "ok":
                assert r["fuzzing"]["recall"] == 1.0 and r["fuzzing"]["fn"] == 0
        fast = doc["summary"]["fast"]
        assert fast["n_scored"] == 6 and sum(fast["counts"].values()) == 6
        on_disk = json.loads((tmp_path / "autointerp.json").read_text())
        assert on_disk["summary"] == doc["summary"]
        # the same run again: every answer comes from the cache, no HTTP request, same results
        again = CachedJudge(OpenAIJudge("scripted-model", base_url=server.url, api_key="k"), tmp_path / "cache")
        doc2 = run_autointerp(data, again, cfg, concurrency=2, progress=False)
        assert server.n_requests == n_http and again.misses == 0 and again.hits == n_http
        assert doc2["latents"] == doc["latents"] and len(doc2["runs"]) == 2


def test_rate_limiter_spaces_requests(monkeypatch):
    limiter = RateLimiter(per_minute=600)  # one every 0.1 s
    t0 = time.monotonic()
    for _ in range(4):
        limiter.acquire()
    assert time.monotonic() - t0 >= 0.29
    clock = [1000.0]  # a fake clock: counted, not timed (a loaded machine may pause any process at any point)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", sleep)
    for _ in range(50):
        RateLimiter(None).acquire()
    assert slept == []  # no limit: never sleeps
    limiter = RateLimiter(per_minute=600)
    for _ in range(3):
        limiter.acquire()
        clock[0] += 0.03  # work between requests
    assert slept == pytest.approx([0.07, 0.07])  # each waits out the rest of its 0.1 s slot
    clock[0] += 1.0
    limiter.acquire()  # after a pause: at once
    assert len(slept) == 2


def test_make_judge_and_missing_key(tmp_path, monkeypatch):
    monkeypatch.delenv("CHATSAE_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match="CHATSAE_TEST_NO_SUCH_KEY"):
        OpenAIJudge("gpt-4o", api_key_env="CHATSAE_TEST_NO_SUCH_KEY")
    judge = make_judge(JudgeConfig(judge="local"), default_cache=tmp_path / "c")
    assert isinstance(judge, CachedJudge) and judge.name == "local:embedded"
    assert isinstance(make_judge(JudgeConfig(judge="local", cache_dir="none"), tmp_path), LocalJudge)
    with pytest.raises(ValueError, match="unknown judge"):
        make_judge(JudgeConfig(judge="claude"))


def test_local_transformers_judge_on_tiny_llama_behind_the_server(interp_features, tmp_path):
    data, _, model, tokenizer, _ = interp_features
    local = LocalJudge("tiny", model_obj=model, tokenizer=tokenizer)
    messages = [{"role": "user", "content": "Say [[1]]"}]
    a, b = local.complete(messages, max_tokens=6), local.complete(messages, max_tokens=6)
    assert isinstance(a, str) and a == b  # greedy decoding is deterministic
    with JudgeServer(local) as server:  # the real model behind the OpenAI API
        client = OpenAIJudge("tiny", base_url=server.url, api_key="k")
        assert client.complete(messages, max_tokens=6) == a
        cfg = AutointerpConfig(
            protocol="fast,detection",
            n_latents=2,
            n_examples=2,
            n_test=2,
            test_batch=4,
            attempts=2,
            max_tokens=6,
            out=str(tmp_path / "a.json"),
        )
        doc = run_autointerp(data, client, cfg, progress=False)
    for r in doc["latents"].values():  # a random model answers garbage: recorded, never a crash
        assert r["fast"]["status"] in ("ok", "unparseable") and len(r["fast"]["raw"]) in (1, 2)
        assert r["detection"]["status"] in ("ok", "unparseable", "no_explanation", "insufficient")
    assert doc["summary"]["fast"]["n_latents"] == 2


class PrefillJudge:
    """Continues a started answer (``prefills``); unprompted it never uses the format."""

    name = "prefill"

    def __init__(self, prefills: bool = True) -> None:
        self.prefills = prefills
        self.requests: list[list[dict]] = []

    def complete(self, messages, temperature=0.0, max_tokens=512, seed=None):
        self.requests.append(messages)
        if messages[-1]["role"] == "assistant":
            return "3]], feature name is [[turn starts]]"
        return "Hmm, maybe three."


def test_retries_are_prefilled_for_judges_that_continue_answers(tmp_path):
    messages = [{"role": "user", "content": "rate it"}]
    judge = PrefillJudge()
    ans = ask(judge, messages, parse_fast, attempts=3, prefill=PREFILL["fast"])
    assert ans.status == "ok" and ans.value == (3, "turn starts")
    assert ans.raw == ["Hmm, maybe three.", "My final verdict score is: [[3]], feature name is [[turn starts]]"]
    assert judge.requests[0] == messages  # the first attempt is unprompted
    assert judge.requests[1] == [*messages, {"role": "assistant", "content": PREFILL["fast"]}]
    # a judge that cannot continue an answer never gets a trailing assistant message
    plain = PrefillJudge(prefills=False)
    ans = ask(plain, messages, parse_fast, attempts=2, prefill=PREFILL["fast"])
    assert ans.status == "unparseable" and all(r == messages for r in plain.requests)
    # the cache keeps the flag and keys prefilled requests apart from plain ones
    cached = CachedJudge(PrefillJudge(), tmp_path / "cache")
    assert cached.prefills
    assert ask(cached, messages, parse_fast, attempts=2, prefill=PREFILL["fast"]).status == "ok"
    assert cached.misses == 2


def test_local_judge_continues_a_prefilled_answer(interp_features):
    _, _, model, tokenizer, _ = interp_features
    local = LocalJudge("tiny", model_obj=model, tokenizer=tokenizer)
    user = [{"role": "user", "content": "Rate it."}]
    fresh = tokenizer.decode(local.encode(user)[0][0])
    started = tokenizer.decode(local.encode([*user, {"role": "assistant", "content": PREFILL["fast"]}])[0][0])
    assert fresh.rstrip().endswith("assistant")  # the opening of a new assistant turn
    assert started.endswith(PREFILL["fast"])  # the started answer, not closed by an end-of-turn token
    assert started.startswith(fresh.rstrip())
    text = local.complete([*user, {"role": "assistant", "content": PREFILL["fast"]}], max_tokens=4)
    assert isinstance(text, str)
