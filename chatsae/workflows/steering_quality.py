"""The steering claim, measured: how steering a latent (``add`` mode, ``x' = x + alpha * d_k``) changes

- the **log-likelihood of reference answers** (teacher forcing): mean NLL per answer token of ``prompt + answer``
  under steering at every position, for each alpha;
- **gsm8k accuracy** of greedy generations: the last number of the answer against the reference after ``####``;

for chosen latents (e.g. the top special-token latents of ``chatsae special-tokens``) against **random latents of
similar activation scale** (:func:`matched_random_latents`), with 95% intervals: a percentile bootstrap over items,
paired (every condition answers the same items), so a difference "vs alpha = 0" or "top vs random" is computed per
item (:mod:`chatsae.eval.stats`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..eval import stats as S
from ..models.prefix import capture_shared
from ..steer.interventions import Steering, make_edits, resolve_hook
from ..steer.measures import answer_nll, pad_ids, strip_eos
from ..steer.report import encode_prompt, generate

if TYPE_CHECKING:
    from ..sae import SAE

ALPHAS = (0.0, 15.0, 25.0, 50.0, 100.0, 150.0, 200.0)
"""The FAST paper's steering strengths."""
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class QAItem(NamedTuple):
    """One question with its reference answer (``final``: the gsm8k number after ``####``, else None)."""

    question: str
    answer: str
    final: str | None


def gsm8k_item(question: str, answer: str) -> QAItem:
    """A gsm8k record: the reference's final answer is the text after ``####``."""
    final = answer.rsplit("####", 1)[1].strip() if "####" in answer else None
    return QAItem(question, answer, None if final is None else normalize_number(final))


def normalize_number(text: str) -> str:
    """``"1,234.50"`` -> ``"1234.5"``; other text unchanged (stripped)."""
    t = text.strip().replace(",", "").rstrip(".")
    try:
        v = float(t)
    except ValueError:
        return t
    return str(int(v)) if v.is_integer() else repr(v)


def final_number(text: str) -> str | None:
    """The last number of a generated answer (after ``####`` if the model wrote one), normalised; None if none."""
    tail = text.rsplit("####", 1)[1] if "####" in text else text
    found = _NUMBER.findall(tail)
    return normalize_number(found[-1]) if found else None


def matched_random_latents(
    scale: Tensor, latent: int, n: int, seed: int = 0, factor: float = 2.0, exclude: Sequence[int] = ()
) -> list[int]:
    """``n`` random latents (fixed ``seed``) whose activation scale (``scale[d_sae]``, e.g. the mean activation
    when firing, ``FeatureData.mean_act``) is within ``factor`` of ``latent``'s; ValueError if too few exist."""
    s = float(scale[latent])
    if s <= 0:
        raise ValueError(f"latent {latent} has activation scale {s}: it never fires, nothing to match")
    ok = (scale >= s / factor) & (scale <= s * factor)
    ok[[latent, *exclude]] = False
    pool = ok.nonzero(as_tuple=True)[0]
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} latents within {factor}x of latent {latent}'s scale {s:.4g}; want {n}")
    g = torch.Generator().manual_seed(seed)
    return sorted(pool[torch.randperm(len(pool), generator=g)[:n]].tolist())


@torch.no_grad()
def activation_scale(
    model: nn.Module, sae: SAE, prompt_ids: Sequence[Sequence[int]], hook: Any = None, batch_size: int = 8
) -> Tensor:
    """``[d_sae]`` mean activation of each latent over the tokens where it fires (0 if it never does), on the
    prompts' tokens with position 0 (the attention sink) excluded: the scale :func:`matched_random_latents` uses."""

    hook = resolve_hook(sae, hook)
    device = next(model.parameters()).device
    total = torch.zeros(sae.W_dec.shape[0], dtype=torch.float64)
    fires = torch.zeros_like(total)
    for s in range(0, len(prompt_ids), batch_size):
        ids, mask = pad_ids(prompt_ids[s : s + batch_size], 0, left=False)
        keep = mask.bool()
        keep[:, 0] = False
        x = capture_shared(model, hook, ids.to(device), mask.to(device))[keep.to(device)]
        f = sae.encode(x.to(sae.W_dec.dtype)).double().cpu()
        total += f.sum(0)
        fires += (f > 0).sum(0)
    return total / fires.clamp_min(1)


def _steering(model: nn.Module, sae: SAE, latent: int, alpha: float) -> Steering | None:
    return None if alpha == 0 else Steering(model, sae, make_edits(latent, "add", alpha))


@torch.no_grad()
def reference_nll(
    model: nn.Module,
    sae: SAE,
    latent: int,
    alpha: float,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_id: int = 0,
    batch_size: int = 8,
) -> list[tuple[float, int]]:
    """Per item (summed NLL of the answer tokens, their number) with ``latent`` steered by ``alpha`` at every
    position of ``prompt + answer`` (teacher forcing); alpha 0 = the clean model."""
    out: list[tuple[float, int]] = []
    steering = _steering(model, sae, latent, alpha)
    for s in range(0, len(prompts), batch_size):
        P, A = prompts[s : s + batch_size], answers[s : s + batch_size]
        if steering is None:
            out += answer_nll(model, P, A, pad_id)
        else:
            with steering:
                out += answer_nll(model, P, A, pad_id)
    return out


def run_quality(
    model: nn.Module,
    tokenizer: Any,
    sae: SAE,
    items: Sequence[QAItem],
    latents: dict[str, Sequence[int]],
    alphas: Sequence[float] = ALPHAS,
    accuracy: bool = True,
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> dict[str, Any]:
    """For every group of latents (``latents[label]``, e.g. ``{"top": [k], "random": [r1, r2, r3]}``), every latent
    and alpha: per-item answer NLL under teacher forcing and (``accuracy``) greedy-answer correctness. Returns
    ``{"alphas", "groups", "items": n, "per_item": {label: {latent: {alpha: {"nll": [...], "n": [...],
    "correct": [...]}}}}}``; :func:`quality_summary` turns it into intervals and verdicts."""
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": it.question}]) for it in items]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    answers = [list(tokenizer(it.answer, add_special_tokens=False)["input_ids"]) + eos for it in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_item: dict[str, dict[int, dict[float, dict[str, list[float]]]]] = {}
    clean: dict[str, list[float]] = {}
    for label, group in latents.items():
        per_item[label] = {}
        for k in group:
            per_item[label][int(k)] = {}
            for alpha in alphas:
                if alpha == 0 and clean:  # the clean model does not depend on the latent
                    per_item[label][int(k)][alpha] = clean
                    continue
                nll = reference_nll(model, sae, int(k), alpha, prompts, answers, pad, batch_size)
                row = {"nll": [v for v, _ in nll], "n": [float(n) for _, n in nll]}
                if accuracy:
                    gen = generate(
                        model, tokenizer, prompts, max_new_tokens, batch_size, _steering(model, sae, int(k), alpha)
                    )
                    texts = [tokenizer.decode(strip_eos(g, set(eos)), skip_special_tokens=True) for g in gen]
                    row["correct"] = [
                        float(it.final is not None and final_number(t) == it.final)
                        for it, t in zip(items, texts, strict=True)
                    ]
                per_item[label][int(k)][alpha] = row
                if alpha == 0:
                    clean = row
    return {
        "alphas": list(alphas),
        "groups": {k: [int(v) for v in g] for k, g in latents.items()},
        "items": len(items),
        "per_item": per_item,
    }


def _terms(rows: Sequence[dict[str, list[float]]], metric: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(num, den)`` per item of each latent's row: NLL per answer token, or accuracy (correct / 1)."""
    if metric == "nll":
        return [(np.asarray(r["nll"]), np.asarray(r["n"])) for r in rows]
    return [(np.asarray(r["correct"]), np.ones(len(r["correct"]))) for r in rows]


def quality_summary(result: dict[str, Any], n_boot: int = S.N_BOOT, seed: int = S.SEED) -> dict[str, Any]:
    """Intervals from :func:`run_quality`'s per-item values. Per group, alpha and metric (``nll`` = mean NLL per
    answer token, ``accuracy``): the group mean over its latents with a bootstrap interval over items, and its paired
    difference from alpha 0; per alpha, each pair of groups' paired difference with a verdict."""
    groups, alphas = list(result["per_item"]), result["alphas"]
    metrics = [
        m
        for m in ("nll", "accuracy")
        if m == "nll"
        or all("correct" in row for g in result["per_item"].values() for lat in g.values() for row in lat.values())
    ]
    summary: dict[str, Any] = {"groups": {}, "pairs": []}
    for g in groups:
        lat = list(result["per_item"][g].values())
        summary["groups"][g] = {}
        for alpha in alphas:
            rows = [lat_rows[alpha] for lat_rows in lat]
            base = [lat_rows[alphas[0]] for lat_rows in lat]
            entry = {}
            for m in metrics:
                key = "nll" if m == "nll" else "correct"
                terms = _terms(rows, key)
                entry[m] = S.bootstrap_mean_difference(terms, [], None, n_boot, seed)._asdict()
                entry[f"{m}_vs_alpha_{alphas[0]:g}"] = S.bootstrap_mean_difference(
                    terms, _terms(base, key), None, n_boot, seed
                )._asdict()
            summary["groups"][g][str(alpha)] = entry
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            for alpha in alphas[1:]:
                for m in metrics:
                    key = "nll" if m == "nll" else "correct"
                    ta = _terms([r[alpha] for r in result["per_item"][a].values()], key)
                    tb = _terms([r[alpha] for r in result["per_item"][b].values()], key)
                    d = S.bootstrap_mean_difference(ta, tb, None, n_boot, seed)
                    name = "answer NLL per token" if m == "nll" else "gsm8k accuracy"
                    verdict = S.verdict(a, b, f"{name} at alpha {alpha:g}", [d])
                    summary["pairs"].append(
                        {"a": a, "b": b, "alpha": alpha, "metric": m, "difference": d._asdict(), "verdict": verdict}
                    )
    return summary
