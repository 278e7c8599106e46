"""Judge-free interpretability **proxies** from the output of ``chatsae features`` (no language-model judge):

- **token-explanation score**: each latent is "explained" by the set of tokens it fires on in its top contexts (the
  ``n_tokens`` most frequent); that explanation predicts, on held-out contexts (the quantile contexts from samples
  not among the top ones, and the quiet random windows), whether the latent fires at each token. Reported as the
  AUC of that prediction (0.5 = chance, 1 = the token set says exactly where it fires) and the correlation of the
  indicator with the activation. A latent that a short token list explains scores high; a contextual one scores low.
- **template-selective share**: the share of live latents whose firings fall (>= ``selective``) on chat-template
  tokens (``FeatureData.special_share``), with at least ``min_fires`` firings.
- **firing-frequency spectrum**: counts of log10 firing frequency (fixed bins of :mod:`chatsae.eval.metrics`),
  dead and dense fractions.
- **by token class**: each live latent is a *template latent* when at least half (``TEMPLATE_MAJORITY``) of its
  firings fall on chat-template tokens, else a *content latent*; the token-explanation AUC is also given within each
  class (``by_class``), with the share of live latents that are template latents. A template latent is often
  explained by one or two template token ids, so an SAE with more of them gets a higher overall AUC without its
  content latents being any more token-like: the per-class AUCs compare like with like.

These are proxies: they measure how token-like and how template-bound latents are, not whether a human finds them
meaningful. :func:`compare_proxies` compares several SAEs' features with 95% bootstrap intervals over latents.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..eval import metrics as M
from ..eval import stats as S
from .store import Context, FeatureData

N_TOKENS = 5
SELECTIVE = 0.9
MIN_FIRES = 5
TEMPLATE_MAJORITY = 0.5
"""A live latent with at least this share of its firings on chat-template tokens is a template latent."""
CLASSES = ("content", "template")


def explanation_tokens(contexts: Sequence[Context], n_tokens: int = N_TOKENS) -> list[int]:
    """The ``n_tokens`` token ids the latent fires on most often in ``contexts`` (ties: larger summed activation
    first, then smaller id)."""
    count: Counter[int] = Counter()
    total: defaultdict[int, float] = defaultdict(float)  # summed activation per token id
    for c in contexts:
        for t, a in zip(c.tokens, c.acts, strict=True):
            if a > 0:
                count[t] += 1
                total[t] += a
    return sorted(count, key=lambda t: (-count[t], -total[t], t))[:n_tokens]


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve, ``P(score_pos > score_neg) + P(tie) / 2`` (Mann-Whitney with mid-ranks); NaN when
    one class is empty."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # mid-ranks of tied scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def explanation_score(explain: Sequence[int], heldout: Sequence[Context]) -> dict[str, float]:
    """How well "fires on these tokens" predicts the latent on ``heldout`` contexts (every token of every window):
    ``auc`` (fired vs not), ``corr`` (Pearson, indicator vs activation; NaN if either is constant), ``tokens``."""
    keep = set(explain)
    pred = [float(t in keep) for c in heldout for t in c.tokens]
    acts = [float(a) for c in heldout for a in c.acts]
    x, a = np.asarray(pred), np.asarray(acts)
    corr = float(np.corrcoef(x, a)[0, 1]) if len(x) > 1 and x.std() > 0 and a.std() > 0 else float("nan")
    return {"auc": auc(pred, [v > 0 for v in acts]), "corr": corr, "tokens": float(len(pred))}


def heldout_contexts(data: FeatureData, latent: int) -> list[Context]:
    """Quantile contexts from samples that are not among the latent's top contexts, and its quiet random windows."""
    top = {c.sample for c in data.contexts(latent, "top")}
    return [c for c in data.contexts(latent, "quantile") if c.sample not in top] + data.contexts(latent, "random")


def latent_scores(
    data: FeatureData,
    n_tokens: int = N_TOKENS,
    latents: Sequence[int] | None = None,
) -> dict[int, dict[str, Any]]:
    """Token-explanation score of each latent that fired (default ``data.fired()``) and has held-out contexts."""
    out = {}
    for j in data.fired().tolist() if latents is None else latents:
        explain = explanation_tokens(data.contexts(j, "top"), n_tokens)
        held = heldout_contexts(data, j)
        if not explain or not held:
            continue
        out[int(j)] = {"explanation": explain, **explanation_score(explain, held)}
    return out


def latent_classes(data: FeatureData) -> list[str]:
    """``"template"`` or ``"content"`` for every latent (``[d_sae]``): template when at least
    :data:`TEMPLATE_MAJORITY` of its firings fall on chat-template tokens (a latent that never fired is content; it is
    not counted as live anywhere)."""
    template = (data.special_share >= TEMPLATE_MAJORITY) & (data.fire_count > 0)
    return [CLASSES[int(t)] for t in template.tolist()]


def class_summary(scores: dict[int, dict[str, Any]], classes: Sequence[str], live: Sequence[bool]) -> dict[str, Any]:
    """Per class: live latents, their share of the live latents, and the mean token-explanation AUC of the scored
    ones (``scores`` from :func:`latent_scores`)."""
    n_live = max(sum(bool(v) for v in live), 1)
    out = {}
    for cls in CLASSES:
        aucs = [v["auc"] for j, v in scores.items() if classes[j] == cls and math.isfinite(v["auc"])]
        count = sum(1 for c, v in zip(classes, live, strict=True) if v and c == cls)
        out[cls] = {
            "live": count,
            "share_of_live": count / n_live,
            "explanation_auc": float(np.mean(aucs)) if aucs else None,
            "scored_latents": len(aucs),
        }
    return out


def proxies(
    data: FeatureData, n_tokens: int = N_TOKENS, selective: float = SELECTIVE, min_fires: int = MIN_FIRES
) -> dict[str, Any]:
    """All proxies of one SAE's features (see the module docstring); per-latent values under ``latents``."""
    if not (isinstance(n_tokens, int) and n_tokens > 0 and min_fires >= 0 and 0 <= selective <= 1):
        raise ValueError(
            f"proxies: n_tokens must be a positive integer (got {n_tokens!r}), min_fires >= 0 (got {min_fires!r}) "
            f"and selective in [0, 1] (got {selective!r})"
        )
    scores = latent_scores(data, n_tokens)
    classes = latent_classes(data)
    for j, v in scores.items():
        v["class"] = classes[j]
    freq = data.frequency
    live = data.fire_count > 0
    enough = data.fire_count >= min_fires
    template = (data.special_share >= selective) & enough
    aucs = [v["auc"] for v in scores.values() if math.isfinite(v["auc"])]
    by_class = class_summary(scores, classes, live.tolist())
    return {
        "d_sae": data.d_sae,
        "n_tokens": data.n_tokens,
        "l0": float(data.fire_count.sum()) / max(data.n_tokens, 1),
        "live": int(live.sum()),
        "explanation_auc": float(np.mean(aucs)) if aucs else None,
        "scored_latents": len(aucs),
        "template_selective": int(template.sum()),
        "template_selective_share": int(template.sum()) / max(int(live.sum()), 1),
        "by_class": by_class,
        "dead_fraction": M.dead_latents(freq) / data.d_sae,
        "dense_fraction": M.dense_latents(freq) / data.d_sae,
        "firing_histogram": {"log10_bin_edges": list(M.HISTOGRAM_EDGES), "counts": M.firing_histogram(freq)},
        "settings": {
            "n_tokens": n_tokens,
            "selective": selective,
            "min_fires": min_fires,
            "template_majority": TEMPLATE_MAJORITY,
        },
        "latents": {str(j): v for j, v in scores.items()},
        "template_selective_latents": template.nonzero(as_tuple=True)[0].tolist(),
    }


def mean_interval(values: Sequence[float], seed: int = S.SEED) -> S.Interval:
    """The mean of ``values`` (e.g. one SAE's per-latent AUCs) with its 95% percentile bootstrap interval."""
    v = np.asarray(values, dtype=np.float64)
    return S.bootstrap_ratio(v, np.ones_like(v), seed=seed) if len(v) else S.Interval(*(float("nan"),) * 3, 0)


def unpaired_difference(
    a: Sequence[float], b: Sequence[float], n_boot: int = S.N_BOOT, seed: int = S.SEED, level: float = S.LEVEL
) -> S.Interval:
    """``mean(a) − mean(b)`` of two independent samples (e.g. the latents of two SAEs), percentile bootstrap with an
    independent resampling of each."""
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(va) < 2 or len(vb) < 2:
        return S.Interval(
            float(va.mean() - vb.mean()) if len(va) and len(vb) else float("nan"),
            float("nan"),
            float("nan"),
            min(len(va), len(vb)),
        )
    ca, cb = S.bootstrap_counts(len(va), n_boot, seed), S.bootstrap_counts(len(vb), n_boot, seed + 1)
    reps = ca @ va / len(va) - cb @ vb / len(vb)
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return S.Interval(float(va.mean() - vb.mean()), float(lo), float(hi), min(len(va), len(vb)))


def per_latent(p: dict[str, Any]) -> dict[str, list[float]]:
    """Per-latent values behind each compared proxy (keys of :data:`COMPARED`) of one ``proxies(...)`` result; the
    per-class keys are empty for a result written before the token-class split."""
    scored = [v for v in p["latents"].values() if v["auc"] is not None and math.isfinite(v["auc"])]
    live = p["live"]
    sel = p["template_selective"]
    n_tmpl = (p.get("by_class") or {}).get("template", {}).get("live")
    out = {
        "explanation_auc": [v["auc"] for v in scored],
        "explanation_auc_content": [v["auc"] for v in scored if v.get("class") == "content"],
        "explanation_auc_template": [v["auc"] for v in scored if v.get("class") == "template"],
        "template_selective_share": [1.0] * sel + [0.0] * max(live - sel, 0),
        "template_latent_share": [] if n_tmpl is None else [1.0] * n_tmpl + [0.0] * max(live - n_tmpl, 0),
    }
    return out


COMPARED = {
    "explanation_auc": "token-explanation AUC",
    "explanation_auc_content": "token-explanation AUC of content latents",
    "explanation_auc_template": "token-explanation AUC of template latents",
    "template_selective_share": "template-selective share",
    "template_latent_share": "template-latent share",
}


def compare_proxies(named: dict[str, dict[str, Any]], seed: int = S.SEED) -> dict[str, Any]:
    """``named[label] = proxies(...)`` of several SAEs -> per SAE each compared proxy with its 95% interval over
    latents, and for each pair of SAEs the difference with its interval and a verdict (``stats.verdict``:
    "higher"/"lower" only when the interval excludes 0)."""
    values = {name: per_latent(p) for name, p in named.items()}
    per_sae = {name: {k: mean_interval(v[k], seed)._asdict() for k in COMPARED} for name, v in values.items()}
    names = list(named)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for key, text in COMPARED.items():
                d = unpaired_difference(values[a][key], values[b][key], seed=seed)
                pairs.append(
                    {"a": a, "b": b, "proxy": key, "difference": d._asdict(), "verdict": S.verdict(a, b, text, [d])}
                )
    return {"saes": per_sae, "pairs": pairs}


def proxy_lines(comparison: dict[str, Any]) -> list[str]:
    """Plain lines: each SAE's proxies with intervals, then each pair's verdict."""
    out = []
    for name, per in comparison["saes"].items():
        parts = [f"{COMPARED[k]} {S.Interval(**iv).text()}" for k, iv in per.items()]
        out.append(f"{name}: " + "; ".join(parts))
    for p in comparison["pairs"]:
        out.append(f"- {p['verdict']} (difference {S.Interval(**p['difference']).text()})")
    return out
