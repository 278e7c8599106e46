"""Judges for auto-interpretation: any OpenAI-compatible chat endpoint, or a local transformers chat model.

A judge has a ``name`` (part of the cache key), ``complete(messages, temperature, max_tokens, seed) -> str`` and
``prefills``: whether a final ``assistant`` message is continued (answer prefill) rather than answered anew.
:class:`CachedJudge` stores every answer on disk under a hash of the request (judge name, messages, sampling
settings), so reruns and resumed runs cost nothing; :func:`ask` retries malformed answers and never raises.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import httpx
import torch

from ..core.config import ConfigError, validate
from ..core.progress import Progress
from ..core.redact import redact, redact_url, register_secret, register_url
from ..core.utils import atomic_file, read_json_file
from ..models import load_model
from .prompts import Messages, ParseError
from .transport import DeadlineTransport

MAX_ANSWER_CHARS = 1_000_000
"""Longest answer kept from a judge: a longer one is cut here and flagged (see :func:`cap_answer`)."""
_TRUNCATED = re.compile(r"\n\[chatsae: answer truncated: [\d,]+ characters, the first [\d,]+ kept\]$")

T = TypeVar("T")
R = TypeVar("R")


class Judge(Protocol):
    name: str
    prefills: bool
    """True if a trailing ``assistant`` message is continued: ``complete`` then returns only the continuation."""

    def complete(
        self, messages: Messages, temperature: float = 0.0, max_tokens: int = 512, seed: int | None = None
    ) -> str: ...


@dataclass
class JudgeConfig:
    """The judge LLM of auto-interpretation."""

    judge: str = "local"
    """local (a transformers chat model run here) or openai (any OpenAI-compatible chat endpoint)."""
    judge_model: str = "embedded"
    """Local: HF name / directory / GGUF / 'embedded'. OpenAI: the model name sent to the endpoint (e.g. gpt-4o)."""
    base_url: str | None = None
    """OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 (None = the OpenAI API)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (a local endpoint without one gets a dummy key)."""
    concurrency: int = 4
    """Parallel requests (a local judge runs one at a time)."""
    requests_per_minute: float | None = None
    """Rate limit of requests to the endpoint (None = unlimited)."""
    http_retries: int = 4
    """Retries of failed HTTP requests (429, 5xx, connection errors) by the client, with exponential backoff."""
    timeout: float = 120.0
    """Seconds one request may take in whole. OpenAI: one HTTP attempt (connect, headers and body, even from a
    server that trickles bytes); failed attempts are retried --http-retries times. Local: the prompt and the
    generation (stopped at the deadline; the request then fails)."""
    cache_dir: str | None = None
    """On-disk cache of answers. None = FEATURES_DIR/judge_cache; 'none' disables the cache."""
    judge_device: str = "cpu"
    """Local judge: device."""
    judge_dtype: str = "float32"
    """Local judge: dtype."""

    def __post_init__(self) -> None:
        if self.judge not in ("local", "openai"):
            raise ConfigError(f": unknown judge {self.judge!r}; use local or openai", "judge")
        validate(
            self,
            positive=("concurrency", "requests_per_minute", "timeout"),
            non_negative=("http_retries",),
            dtypes=("judge_dtype",),
            devices=("judge_device",),
            paths=("cache_dir",),
        )


def cap_answer(text: str, limit: int = MAX_ANSWER_CHARS) -> str:
    """``text``, or its first ``limit`` characters followed by a line saying it was truncated (idempotent)."""
    if len(text) <= limit or is_truncated(text):
        return text
    return f"{text[:limit]}\n[chatsae: answer truncated: {len(text):,} characters, the first {limit:,} kept]"


def is_truncated(text: str) -> bool:
    """Whether :func:`cap_answer` cut ``text``."""
    return _TRUNCATED.search(text[-200:]) is not None


class RateLimiter:
    """At most ``per_minute`` acquisitions per minute, evenly spaced; thread-safe. None = no limit."""

    def __init__(self, per_minute: float | None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval
        if wait > 0:
            time.sleep(wait)


class OpenAIJudge:
    """A chat model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (the ``openai`` client)."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        requests_per_minute: float | None = None,
    ) -> None:
        from openai import OpenAI  # loaded only when a judge runs

        key = api_key or os.environ.get(api_key_env)
        if not key:
            if base_url is None:
                raise ValueError(
                    f"no API key: set the environment variable {api_key_env} (or pass --base-url for a local endpoint)"
                )
            key = "not-needed"
        register_secret(key)
        register_url(base_url)  # a password or token in the URL is a secret too
        self.model = model
        self.name = f"openai:{redact_url(base_url) if base_url else 'api.openai.com'}:{model}"
        self.prefills = False  # the OpenAI API answers a trailing assistant message with a new message
        http = httpx.Client(transport=DeadlineTransport(timeout), timeout=timeout)  # one deadline per attempt
        self.client = OpenAI(
            api_key=key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            http_client=http,  # type: ignore[arg-type,unused-ignore]  # openai>=2 types httpx2, takes httpx clients
        )
        self.limiter = RateLimiter(requests_per_minute)
        self._tokens_key = "max_tokens"

    def complete(
        self, messages: Messages, temperature: float = 0.0, max_tokens: int = 512, seed: int | None = None
    ) -> str:
        from openai import BadRequestError  # loaded only when a judge runs

        self.limiter.acquire()
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            self._tokens_key: max_tokens,
        }
        if seed is not None:
            kwargs["seed"] = seed
        try:
            response = self.client.chat.completions.create(**kwargs)
        except BadRequestError as e:  # newer OpenAI models only take max_completion_tokens
            if self._tokens_key != "max_tokens" or "max_completion_tokens" not in str(e):
                raise
            self._tokens_key = "max_completion_tokens"
            kwargs["max_completion_tokens"] = kwargs.pop("max_tokens")
            response = self.client.chat.completions.create(**kwargs)
        if not response.choices:
            raise RuntimeError("the endpoint returned no choices")
        return cap_answer(response.choices[0].message.content or "")


class LocalJudge:
    """A transformers chat model run in this process (default: the embedded SmolLM2, so it works offline).

    Requests are served one at a time. ``temperature`` 0 is greedy decoding; otherwise sampling seeded by ``seed``.
    A final ``assistant`` message is continued (answer prefill), which steers small judges into the answer format.
    ``timeout``: seconds one request may take (prompt and generation; the model's first load not counted): the
    generation is stopped there and the request fails with a :class:`TimeoutError`, as an HTTP judge's does.
    """

    prefills = True

    def __init__(
        self,
        model: str = "embedded",
        device: str = "cpu",
        dtype: str = "float32",
        model_obj: Any = None,
        tokenizer: Any = None,
        max_prompt_tokens: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.name = f"local:{model}"
        self.timeout = timeout
        self._spec = (model, device, dtype)
        self._model, self._tokenizer = model_obj, tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            name, device, dtype = self._spec
            self._model, self._tokenizer = load_model(name, dtype=dtype, device=device)
        return self._model, self._tokenizer

    def encode(self, messages: Messages) -> tuple[torch.Tensor, torch.Tensor]:
        """The chat-templated prompt: ``(input_ids [1, T], attention_mask [1, T])``; it ends with the opening of
        the assistant turn, or, if the last message is the assistant's, with that message's text (continued)."""
        cont = bool(messages) and messages[-1]["role"] == "assistant"
        enc = self._load()[1].apply_chat_template(
            messages, add_generation_prompt=not cont, continue_final_message=cont, return_tensors="pt", return_dict=True
        )
        return enc["input_ids"], enc["attention_mask"]

    def complete(
        self, messages: Messages, temperature: float = 0.0, max_tokens: int = 512, seed: int | None = None
    ) -> str:
        with self._lock:
            model, tok = self._load()
            deadline = Deadline(self.timeout)
            ids, mask = self.encode(messages)
            limit = self.max_prompt_tokens or getattr(model.config, "max_position_embeddings", None)
            if limit and ids.shape[1] + max_tokens > limit:
                keep = max(limit - max_tokens, 1)
                ids, mask = ids[:, -keep:], mask[:, -keep:]  # keep the end: it holds the question
            device = next(model.parameters()).device
            gen: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": tok.pad_token_id}
            if self.timeout is not None:
                from transformers import StoppingCriteriaList

                gen["stopping_criteria"] = StoppingCriteriaList([deadline])
            if temperature > 0:
                gen.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
            else:
                gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(seed or 0)
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **gen)
            if deadline.passed:
                raise TimeoutError(
                    f"local judge: no answer within {self.timeout:g} s (stopped after {out.shape[1] - ids.shape[1]} "
                    f"of {max_tokens} tokens); raise --timeout or lower the answer length"
                )
            return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


class Deadline:
    """A wall-clock limit for ``model.generate`` (a transformers stopping criterion): generation stops at the first
    step past ``seconds`` from now (None: never); :attr:`passed` says whether it did."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds
        self.passed = False

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        self.passed = self.passed or (self.end is not None and time.monotonic() >= self.end)
        return torch.full((input_ids.shape[0],), self.passed, dtype=torch.bool, device=input_ids.device)


class CachedJudge:
    """Wraps a judge with an on-disk answer cache: ``root/ab/abcdef....json`` per request hash."""

    def __init__(self, judge: Judge, root: str | Path) -> None:
        self.judge, self.root = judge, Path(root)
        self.name = judge.name
        self.prefills = bool(getattr(judge, "prefills", False))
        self.hits = self.misses = 0
        self._lock = threading.Lock()

    def key(self, messages: Messages, temperature: float, max_tokens: int, seed: int | None) -> str:
        request = {
            "judge": self.name,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
        }
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()

    def complete(
        self, messages: Messages, temperature: float = 0.0, max_tokens: int = 512, seed: int | None = None
    ) -> str:
        key = self.key(messages, temperature, max_tokens, seed)
        path = self.root / key[:2] / f"{key}.json"
        if path.is_file():
            try:
                answer = read_json_file(path, "a judge-cache entry (a JSON object with a string 'answer')")["answer"]
                if not isinstance(answer, str):
                    raise ValueError(f"{path}: expected a judge-cache entry with a string 'answer'")
                with self._lock:
                    self.hits += 1
                return answer
            except (ValueError, KeyError, OSError) as e:  # a damaged entry is named and recomputed
                why = str(e) if str(path) in str(e) else f"{path}: unreadable judge-cache entry ({e!r})"
                print(f"warning: {why}; asking the judge again", file=sys.stderr, flush=True)
        answer = cap_answer(self.judge.complete(messages, temperature=temperature, max_tokens=max_tokens, seed=seed))
        entry = {"judge": self.name, "messages": messages, "temperature": temperature, "seed": seed, "answer": answer}
        if is_truncated(answer):
            entry["truncated"] = True
        with atomic_file(path, "w") as fh:
            fh.write(redact(json.dumps(entry)))
        with self._lock:
            self.misses += 1
        return answer


class Answer(NamedTuple):
    """Outcome of :func:`ask`."""

    value: Any
    """The parsed value, or None."""
    status: str
    """ok | unparseable (every answer malformed) | error (requests failed)."""
    raw: list[str]
    """The text of every attempt (``error: ...`` for failed requests)."""


def ask(
    judge: Judge,
    messages: Messages,
    parse: Callable[[str], T],
    attempts: int = 3,
    temperature: float = 0.0,
    retry_temperature: float = 0.7,
    max_tokens: int = 512,
    prefill: str | None = None,
) -> Answer:
    """Ask until ``parse`` accepts the answer (at most ``attempts`` times); never raises for judge failures.

    Attempt ``i > 0`` samples at ``retry_temperature`` with seed ``i``, so a retry is a new request (and cache key).
    ``prefill``: if the judge ``prefills``, retries start the answer with this text (e.g. ``"... [["``) and the
    judge writes the rest; the parsed (and recorded) answer is ``prefill + continuation``.
    """
    raw: list[str] = []
    answered = False
    for i in range(max(attempts, 1)):
        start = prefill if i > 0 and prefill and getattr(judge, "prefills", False) else ""
        request = [*messages, {"role": "assistant", "content": start}] if start else messages
        try:
            text = start + cap_answer(
                judge.complete(
                    request,
                    temperature=temperature if i == 0 else retry_temperature,
                    max_tokens=max_tokens,
                    seed=None if i == 0 else i,
                )
            )
        except Exception as e:  # noqa: BLE001 - a failed request is recorded, the run goes on
            raw.append(redact(f"error: {type(e).__name__}: {e}"))  # endpoints may echo the API key
            continue
        answered = True
        raw.append(text)
        try:
            return Answer(parse(text), "ok", raw)
        except ParseError:
            continue
    return Answer(None, "unparseable" if answered else "error", raw)


def run_concurrent(
    fn: Callable[[T], R],
    items: Sequence[T] | Iterable[T],
    concurrency: int,
    label: str = "judge",
    progress: bool = True,
) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool of ``concurrency`` workers, results in input order."""
    items = list(items)
    with Progress(len(items), label, enabled=progress, unit="latents") as bar:
        if concurrency <= 1:
            results = []
            for x in items:
                results.append(fn(x))
                bar.advance(1)
            return results
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(fn, x) for x in items]
            results = []
            for f in futures:
                results.append(f.result())
                bar.advance(1)
            return results


def make_judge(cfg: JudgeConfig, default_cache: str | Path | None = None) -> Judge:
    """Build the judge of ``cfg`` (wrapped in the answer cache unless disabled)."""
    judge: Judge
    if cfg.judge == "openai":
        judge = OpenAIJudge(
            cfg.judge_model,
            cfg.base_url,
            cfg.api_key_env,
            timeout=cfg.timeout,
            max_retries=cfg.http_retries,
            requests_per_minute=cfg.requests_per_minute,
        )
    elif cfg.judge == "local":
        judge = LocalJudge(cfg.judge_model, cfg.judge_device, cfg.judge_dtype, timeout=cfg.timeout)
    else:
        raise ValueError(f"JudgeConfig.judge: unknown judge {cfg.judge!r}; use local or openai")
    cache = cfg.cache_dir if cfg.cache_dir is not None else default_cache
    if cache is None or str(cache).lower() == "none":
        return judge
    return CachedJudge(judge, cache)


__all__ = [
    "Answer",
    "CachedJudge",
    "Judge",
    "JudgeConfig",
    "LocalJudge",
    "OpenAIJudge",
    "ParseError",
    "RateLimiter",
    "ask",
    "cap_answer",
    "is_truncated",
    "make_judge",
    "redact",
    "run_concurrent",
]
