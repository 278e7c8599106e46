"""The on-disk answer cache of a judge (:class:`CachedJudge`): every answer stored under a hash of the request (judge
name, messages, sampling settings), so reruns and resumed runs cost nothing."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from pathlib import Path

from ..core.redact import redact
from ..core.utils import atomic_file, read_json_file
from .judge_protocol import Judge, cap_answer, is_truncated
from .prompts import Messages


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
