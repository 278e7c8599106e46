"""``chatsae autointerp``: judge-LLM interpretability scores of SAE latents from a features run.

Protocols (``--protocol``, comma-separated):

- ``fast``: the FAST paper's (section 5): sample ``n_latents`` (128) latents whose top contexts are not all zero,
  show the judge the top-5 contexts as tokens interleaved with activation values, read the 1-5 score and a name;
  report the score distribution and the share in the top range (4-5).
- ``detection`` / ``fuzzing`` (EleutherAI delphi style): an explanation is generated from the latent's top
  contexts; the judge then labels held-out contexts (activating ones from the quantile reservoir, never the top
  contexts' samples, vs. non-activating ones) -- detection: does the latent fire in the excerpt?; fuzzing: are the
  marked tokens the ones it fires on? (half marked correctly, half on random inactive tokens). Precision, recall
  and balanced accuracy per latent, then averaged.

Results are merged into ``FEATURES_DIR/autointerp.json`` (``latents`` keyed by id, plus ``summary``).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..core.config import check, validate
from ..core.redact import redact
from ..core.utils import atomic_file
from .judges import Answer, Judge, ask, run_concurrent
from .prompts import (
    PREFILL,
    detection_prompt,
    explain_prompt,
    fast_prompt,
    format_marked,
    fuzzing_prompt,
    parse_binary_list,
    parse_explanation,
    parse_fast,
    token_text,
)
from .store import AUTOINTERP_FILE, Context, FeatureData, read_autointerp

PROTOCOLS = ("fast", "detection", "fuzzing")
MAX_FAILED_SHARE = 0.5
"""``chatsae autointerp`` fails (exit 1) when more than this share of the judgements had only failed requests."""


@dataclass
class AutointerpConfig:
    """Auto-interpretation of latents by a judge LLM (``chatsae autointerp``)."""

    protocol: str = "fast"
    """Comma-separated protocols: fast (the FAST paper's 1-5 rubric), detection, fuzzing; or 'all'."""
    n_latents: int = 128
    """Latents sampled at random among those that fired (paper: 128)."""
    latents: list[int] | None = None
    """Explicit latent ids (comma-separated) instead of a random sample."""
    seed: int = 42
    """Seed of the latent sample and of the test-set shuffles."""
    n_examples: int = 5
    """Top contexts shown to the judge / used to write the explanation (paper: 5)."""
    n_test: int = 10
    """Detection/fuzzing: activating test contexts per latent (and as many non-activating ones for detection)."""
    test_batch: int = 5
    """Detection/fuzzing: excerpts per judge request."""
    show_zero: bool = True
    """FAST prompt: write the activation after every token, zeros included (the paper interleaves all values)."""
    attempts: int = 3
    """Requests per prompt before an answer is recorded as unparseable (retries sample at retry_temperature)."""
    temperature: float = 0.0
    """Sampling temperature of the first request."""
    retry_temperature: float = 0.7
    """Sampling temperature of retries after a malformed answer."""
    max_tokens: int = 512
    """Maximum answer length in tokens."""
    prefill: bool = True
    """Retries of a judge that can continue a started answer (the local judge) begin the answer with the format's
    opening, e.g. 'My final verdict score is: [[' (the raw answers record it)."""
    out: str | None = None
    """Results file. None = FEATURES_DIR/autointerp.json."""

    def __post_init__(self) -> None:
        validate(
            self,
            positive=("n_latents", "n_examples", "n_test", "test_batch", "attempts", "max_tokens"),
            non_negative=("temperature", "retry_temperature"),
            paths=("out",),
            unique=("latents",),
            seeds=("seed",),
        )
        check(
            all(isinstance(i, int) and i >= 0 for i in self.latents or []),
            "latents",
            f"must be latent ids >= 0, got {self.latents}",
        )
        self.protocols()

    def protocols(self) -> list[str]:
        names = list(PROTOCOLS) if self.protocol.strip() == "all" else [p.strip() for p in self.protocol.split(",")]
        bad = [p for p in names if p not in PROTOCOLS]
        if bad or not names:
            raise ValueError(f"--protocol: unknown protocol(s) {bad}; use {', '.join(PROTOCOLS)} or all")
        return names


class BinaryScores(NamedTuple):
    """Confusion counts of 0/1 judgements and the scores derived from them (None where undefined)."""

    tp: int
    fp: int
    tn: int
    fn: int
    n_unparsed: int
    precision: float | None
    recall: float | None
    specificity: float | None
    balanced_accuracy: float | None
    accuracy: float | None
    f1: float | None


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def binary_scores(predictions: list[int | None], labels: list[int]) -> BinaryScores:
    """Scores of ``predictions`` (None = unparsed, left out) against ``labels`` (1 = positive)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    pairs = [(p, y) for p, y in zip(predictions, labels, strict=True) if p is not None]
    tp = sum(1 for p, y in pairs if p == 1 and y == 1)
    fp = sum(1 for p, y in pairs if p == 1 and y == 0)
    tn = sum(1 for p, y in pairs if p == 0 and y == 0)
    fn = sum(1 for p, y in pairs if p == 0 and y == 1)
    precision, recall, specificity = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    balanced = (recall + specificity) / 2 if recall is not None and specificity is not None else None
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return BinaryScores(
        tp,
        fp,
        tn,
        fn,
        len(predictions) - len(pairs),
        precision,
        recall,
        specificity,
        balanced,
        _ratio(tp + tn, len(pairs)),
        f1,
    )


def sample_latents(data: FeatureData, cfg: AutointerpConfig) -> list[int]:
    """The latents to judge: ``cfg.latents`` or ``n_latents`` drawn at random (seeded) among those that fired."""
    if cfg.latents:
        bad = [i for i in cfg.latents if not 0 <= i < data.d_sae]
        if bad:
            raise ValueError(f"AutointerpConfig.latents: ids {bad} out of range 0..{data.d_sae - 1}")
        return list(cfg.latents)
    fired = data.fired().tolist()
    rng = random.Random(cfg.seed)
    return sorted(rng.sample(fired, min(cfg.n_latents, len(fired))))


def held_out_contexts(data: FeatureData, latent: int, cfg: AutointerpConfig) -> tuple[list[Context], list[Context]]:
    """(activating, non-activating) held-out contexts: activating ones spread evenly over the activation quantiles
    of the reservoir, excluding samples among the explanation's top contexts."""
    train = {c.sample for c in data.contexts(latent, "top")[: cfg.n_examples]}
    pool = [c for c in data.contexts(latent, "quantile") if c.sample not in train]
    if len(pool) > cfg.n_test:
        step = (len(pool) - 1) / max(cfg.n_test - 1, 1)
        pool = [pool[round(i * step)] for i in range(cfg.n_test)]
    return pool, data.contexts(latent, "random")[: cfg.n_test]


def _answer_json(ans: Answer, **fields: Any) -> dict[str, Any]:
    return {"status": ans.status, **fields, "raw": ans.raw}


class _Runner:
    def __init__(self, data: FeatureData, judge: Judge, cfg: AutointerpConfig) -> None:
        self.data, self.judge, self.cfg = data, judge, cfg

    def text(self, c: Context) -> str:
        return "".join(token_text(self.data.token(t)) for t in c.tokens)

    def ask(self, messages: list[dict[str, str]], parse: Any, kind: str) -> Answer:
        c = self.cfg
        return ask(
            self.judge,
            messages,
            parse,
            c.attempts,
            c.temperature,
            c.retry_temperature,
            c.max_tokens,
            PREFILL[kind] if c.prefill else None,
        )

    def fast(self, latent: int) -> dict[str, Any]:
        top = self.data.contexts(latent, "top")[: self.cfg.n_examples]
        ans = self.ask(fast_prompt(top, self.data.token, self.cfg.show_zero), parse_fast, "fast")
        v = ans.value
        return _answer_json(ans, score=v.score if v else None, name=v.name if v else None)

    def explanation(self, latent: int) -> dict[str, Any]:
        top = self.data.contexts(latent, "top")[: self.cfg.n_examples]
        ans = self.ask(explain_prompt(top, self.data.token), parse_explanation, "explanation")
        return _answer_json(ans, text=ans.value)

    def judged(self, explanation: str, items: list[tuple[str, int]], fuzz: bool, latent: int) -> dict[str, Any]:
        rng = random.Random(self.cfg.seed * 7919 + latent)
        rng.shuffle(items)
        preds: list[int | None] = []
        raws: list[str] = []
        statuses = []
        make = fuzzing_prompt if fuzz else detection_prompt
        for start in range(0, len(items), self.cfg.test_batch):
            chunk = items[start : start + self.cfg.test_batch]
            n = len(chunk)
            ans = self.ask(make(explanation, [t for t, _ in chunk]), lambda a, n=n: parse_binary_list(a, n), "binary")
            preds.extend(ans.value if ans.value is not None else [None] * n)
            raws.extend(ans.raw)
            statuses.append(ans.status)
        scores = binary_scores(preds, [y for _, y in items])
        status = "ok" if all(s == "ok" for s in statuses) else ("error" if "error" in statuses else "unparseable")
        return {"status": status, **scores._asdict(), "n_items": len(items), "raw": raws}

    def detection(self, latent: int, explanation: str) -> dict[str, Any]:
        pos, neg = held_out_contexts(self.data, latent, self.cfg)
        if not pos or not neg:
            return {"status": "insufficient", "n_items": 0}
        items = [(self.text(c), 1) for c in pos] + [(self.text(c), 0) for c in neg]
        return self.judged(explanation, items, fuzz=False, latent=latent)

    def fuzzing(self, latent: int, explanation: str) -> dict[str, Any]:
        pos, _ = held_out_contexts(self.data, latent, self.cfg)
        rng = random.Random(self.cfg.seed * 104729 + latent)
        items = []
        for i, c in enumerate(pos):
            active = [a > 0 for a in c.acts]
            inactive = [j for j, a in enumerate(active) if not a]
            if i % 2 == 0 or len(inactive) < sum(active):
                items.append((format_marked(c.tokens, active, self.data.token), 1))
            else:  # the same number of marks on random inactive tokens
                chosen = set(rng.sample(inactive, sum(active)))
                items.append((format_marked(c.tokens, [j in chosen for j in range(len(active))], self.data.token), 0))
        if len({y for _, y in items}) < 2:
            return {"status": "insufficient", "n_items": len(items)}
        return self.judged(explanation, items, fuzz=True, latent=latent)

    def latent(self, latent: int, protocols: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "fast" in protocols:
            out["fast"] = self.fast(latent)
        if "detection" in protocols or "fuzzing" in protocols:
            out["explanation"] = expl = self.explanation(latent)
            for name in ("detection", "fuzzing"):
                if name in protocols and expl["text"]:
                    out[name] = getattr(self, name)(latent, expl["text"])
                elif name in protocols:
                    out[name] = {"status": "no_explanation", "n_items": 0}
        return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(latents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Summary of per-latent results: FAST score distribution and top-range share; mean detection/fuzzing scores."""
    summary: dict[str, Any] = {}
    fast = [r["fast"] for r in latents.values() if "fast" in r]
    if fast:
        scores = [r["score"] for r in fast if r.get("score") is not None]
        counts = {str(s): scores.count(s) for s in range(1, 6)}
        summary["fast"] = {
            "n_latents": len(fast),
            "n_scored": len(scores),
            "n_unparseable": sum(r["status"] == "unparseable" for r in fast),
            "n_errors": sum(r["status"] == "error" for r in fast),
            "counts": counts,
            "mean_score": _mean(scores),
            "top_range_share": (counts["4"] + counts["5"]) / len(scores) if scores else None,
            "top_range_share_of_all": (counts["4"] + counts["5"]) / len(fast),
        }
    for name in ("detection", "fuzzing"):
        rows = [r[name] for r in latents.values() if name in r]
        if not rows:
            continue
        scored = [r for r in rows if r.get("balanced_accuracy") is not None]
        pooled = binary_scores(*_pool(rows))
        summary[name] = {
            "n_latents": len(rows),
            "n_scored": len(scored),
            "n_failed": sum(r["status"] not in ("ok",) for r in rows),
            **{
                f"mean_{k}": _mean([r[k] for r in rows if r.get(k) is not None])
                for k in ("balanced_accuracy", "precision", "recall", "f1")
            },
            "pooled": pooled._asdict(),
        }
    return summary


def _pool(rows: list[dict[str, Any]]) -> tuple[list[int | None], list[int]]:
    """Expand the confusion counts of several latents into one prediction/label list (for pooled scores)."""
    preds: list[int | None] = []
    labels: list[int] = []
    for r in rows:
        for p, y, key in ((1, 1, "tp"), (1, 0, "fp"), (0, 0, "tn"), (0, 1, "fn")):
            preds += [p] * int(r.get(key, 0))
            labels += [y] * int(r.get(key, 0))
    return preds, labels


def run_autointerp(
    data: FeatureData, judge: Judge, cfg: AutointerpConfig, concurrency: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Judge the sampled latents with every protocol of ``cfg``; merge into the results file and return its content."""
    protocols = cfg.protocols()
    path = Path(cfg.out) if cfg.out else data.root / AUTOINTERP_FILE
    doc: dict[str, Any] = read_autointerp(path) if path.is_file() else {}  # read first: a damaged file costs no judging
    ids = sample_latents(data, cfg)
    runner = _Runner(data, judge, cfg)
    results = run_concurrent(lambda i: runner.latent(i, protocols), ids, concurrency, "autointerp", progress)
    latents: dict[str, dict[str, Any]] = doc.get("latents", {})
    for i, r in zip(ids, results, strict=True):
        latents.setdefault(str(i), {}).update(r)
    runs = doc.get("runs", [])
    runs.append({"judge": judge.name, "protocols": protocols, "latents": ids, "config": asdict(cfg)})
    doc = {"latents": dict(sorted(latents.items(), key=lambda kv: int(kv[0]))), "runs": runs}
    doc["summary"] = summarize({str(i): latents[str(i)] for i in ids})
    text = json.dumps(doc, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else str(x))
    with atomic_file(path, "w") as fh:
        fh.write(redact(text))  # no API key in the file, even if a judge echoed one
    return doc


def failure_summary(doc: dict[str, Any], ids: list[int] | None = None) -> str | None:
    """One line when every judgement of the latents ``ids`` (default: the last run's) failed, or more than
    :data:`MAX_FAILED_SHARE` of them: counts and the first error; None otherwise. A judgement is one protocol's (or
    the explanation's) result for one latent; it failed when every request for it failed (status ``error``)."""
    if ids is None:
        ids = doc["runs"][-1]["latents"] if doc.get("runs") else []
    results = [r for i in ids for r in doc["latents"].get(str(i), {}).values() if isinstance(r, dict)]
    judged = [r for r in results if r.get("status") not in ("insufficient", "no_explanation")]
    failed = [r for r in judged if r.get("status") == "error"]
    if not judged or len(failed) <= MAX_FAILED_SHARE * len(judged) and len(failed) < len(judged):
        return None
    errors = [raw for r in failed for raw in r.get("raw", []) if raw.startswith("error: ")]
    first = errors[0].removeprefix("error: ").splitlines()[0][:300] if errors else "unknown"
    return (
        f"{len(failed)} of {len(judged)} judgements ({100 * len(failed) / len(judged):.0f}%) got no answer from the "
        f"judge (more than {100 * MAX_FAILED_SHARE:.0f}% allowed); first error: {first}"
    )
