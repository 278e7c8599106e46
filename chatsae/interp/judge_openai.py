"""The HTTP judge: a chat model behind an OpenAI-compatible endpoint (:class:`OpenAIJudge`, through the ``openai``
client with a deadline-enforcing transport), and the request :class:`RateLimiter` it uses."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import httpx

from ..core.redact import redact_url, register_secret, register_url
from .judge_protocol import cap_answer
from .prompts import Messages
from .transport import DeadlineTransport


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
