"""Automatic measures of generated answers: length, distinct-n repetition, garbled/non-English share, perplexity.

- ``repetition_rate(ids, n) = 1 - distinct_n``, with ``distinct_n = #unique n-grams / #n-grams`` of one answer's
  token ids (0 = no repeated n-gram, close to 1 = the same n-gram over and over; 0 for answers shorter than n).
- ``non_ascii_share(text)``: among the letters of the answer (``str.isalpha``) plus Unicode replacement characters
  (``\\ufffd``, from undecodable byte sequences), the share that is not ASCII. English text scores ~0; language
  switching (CJK, Cyrillic, ...) and byte-garbage score high. Accented Latin letters also count, so it is an upper
  bound on "non-English" for languages written in Latin script.
- perplexity: ``exp`` of the mean next-token NLL of the answer tokens (the EOS that ended it included) under the
  clean, unsteered model, conditioned on the prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


def repetition_rate(ids: Sequence[int], n: int) -> float:
    """``1 - distinct-n`` of one token sequence (0.0 when it has no n-gram)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def non_ascii_share(text: str) -> float:
    """Share of non-ASCII letters (and U+FFFD) among the letters of ``text`` (0.0 when it has none)."""
    letters = [c for c in text if c.isalpha() or c == "\ufffd"]
    return sum(ord(c) > 127 for c in letters) / len(letters) if letters else 0.0


def pad_ids(seqs: Sequence[Sequence[int]], pad_id: int, left: bool = True) -> tuple[Tensor, Tensor]:
    """Left-padded (``left=False``: right-padded) ``(input_ids [B, L], attention_mask [B, L])``."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            cols = slice(L - len(s), L) if left else slice(0, len(s))
            ids[i, cols] = torch.tensor(list(s))
            mask[i, cols] = 1
    return ids, mask


@torch.no_grad()
def answer_nll(
    model: nn.Module, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int = 0
) -> list[tuple[float, int]]:
    """Per answer: (summed next-token NLL of the answer tokens given the prompt, number of answer tokens).

    Runs the model on each ``prompt + answer`` (one right-padded batch; pass a few at a time for long inputs).
    """
    ids, mask = pad_ids([list(p) + list(a) for p, a in zip(prompts, answers, strict=True)], pad_id, left=False)
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, ids[:, 1:, None].to(device))[..., 0].cpu()  # [B, L-1]: NLL of token t+1
    out = []
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        n = len(a)
        out.append((float(nll[i, len(p) - 1 : len(p) - 1 + n].sum()), n))
    return out


class AnswerMeasures(NamedTuple):
    """Measures of one answer."""

    length: int
    """Answer tokens, the terminating EOS excluded."""
    repetition: dict[int, float]
    """n -> 1 - distinct-n over the answer's token ids."""
    non_ascii: float
    """Share of non-ASCII letters in the decoded answer."""
    nll: float
    """Summed NLL of the scored tokens (answer + EOS if generated) under the clean model."""
    n_scored: int
    """Number of scored tokens."""


def summarize(measures: Sequence[AnswerMeasures], ns: Sequence[int] = (1, 2, 3)) -> dict[str, float]:
    """Means over answers; perplexity is ``exp(sum NLL / sum scored tokens)`` over all answers."""
    k = max(len(measures), 1)
    scored = sum(m.n_scored for m in measures)
    out = {
        "n_answers": float(len(measures)),
        "mean_length": sum(m.length for m in measures) / k,
        **{f"repetition_{n}": sum(m.repetition[n] for m in measures) / k for n in ns},
        "non_ascii_share": sum(m.non_ascii for m in measures) / k,
        "perplexity": float(torch.tensor(sum(m.nll for m in measures) / scored).exp()) if scored else float("nan"),
    }
    return out


def measure_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    eos_ids: set[int],
    batch_size: int = 8,
    ns: Sequence[int] = (1, 2, 3),
) -> list[AnswerMeasures]:
    """:class:`AnswerMeasures` of each answer (token ids, EOS included if generated); ``model`` must be clean."""
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    out: list[AnswerMeasures] = []
    for s in range(0, len(prompts), batch_size):
        P, A = prompts[s : s + batch_size], answers[s : s + batch_size]
        for a, (nll, n) in zip(A, answer_nll(model, P, A, pad), strict=True):
            body = strip_eos(a, eos_ids)
            text = tokenizer.decode(body, skip_special_tokens=True)
            out.append(
                AnswerMeasures(len(body), {k: repetition_rate(body, k) for k in ns}, non_ascii_share(text), nll, n)
            )
    return out


def strip_eos(ids: Sequence[int], eos_ids: set[int]) -> list[int]:
    """The answer up to (not including) its first EOS token."""
    ids = list(ids)
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i]
    return ids
