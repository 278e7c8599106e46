"""The local judge: a transformers chat model run in this process (:class:`LocalJudge`), with a wall-clock
:class:`Deadline` on its generation."""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from ..models import load_model
from .prompts import Messages


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
