"""Judges for auto-interpretation: any OpenAI-compatible chat endpoint, or a local transformers chat model.

A judge has a ``name`` (part of the cache key), ``complete(messages, temperature, max_tokens, seed) -> str`` and
``prefills``: whether a final ``assistant`` message is continued (answer prefill) rather than answered anew.
:class:`CachedJudge` stores every answer on disk under a hash of the request (judge name, messages, sampling
settings), so reruns and resumed runs cost nothing; :func:`ask` retries malformed answers and never raises.
The judges themselves are in :mod:`chatsae.interp.judge_openai` (HTTP) and :mod:`chatsae.interp.judge_local`
(transformers), the answer cache in :mod:`chatsae.interp.judge_cache`, the protocol and the answer-length cap in
:mod:`chatsae.interp.judge_protocol`; all of them are importable from here. This module holds the judge's config,
:func:`make_judge`, :func:`ask` and :func:`run_concurrent`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ..core.config import ConfigError, validate
from ..core.progress import Progress
from ..core.redact import redact
from .judge_cache import CachedJudge
from .judge_local import Deadline, LocalJudge
from .judge_openai import OpenAIJudge, RateLimiter
from .judge_protocol import MAX_ANSWER_CHARS, Judge, cap_answer, is_truncated
from .prompts import Messages, ParseError

T = TypeVar("T")
R = TypeVar("R")


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
    "MAX_ANSWER_CHARS",
    "Answer",
    "CachedJudge",
    "Deadline",
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
