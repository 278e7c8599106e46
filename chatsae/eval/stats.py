"""Uncertainty of evaluation metrics: percentile bootstrap over evaluation *sequences*, paired differences of two
SAEs evaluated on the same sequences, t-intervals over training seeds, and the verdict printed from them.

A metric here is a ratio of per-sequence sums, ``Σ_i num_i / Σ_i den_i`` over the sequences i (``[S]`` arrays), with
an optional transform (e.g. log2). The bootstrap resamples sequences with replacement (``n_boot`` replicates, a fixed
seed) and recomputes the ratio; the interval is the ``(1 - level)/2`` and ``(1 + level)/2`` percentiles of the
replicates. :data:`SEQUENCE_METRICS` says how each metric of :mod:`chatsae.eval.streaming` is such a ratio of the
per-sequence sums an :class:`~chatsae.eval.result.EvalResult` stores (``per_sequence``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

N_BOOT = 1000
LEVEL = 0.95
SEED = 0
NO_VERDICT = "no verdict at this budget"
NO_DIFFERENCE = NO_VERDICT
"""What a comparison says when its intervals do not support a finding (the older name kept for callers)."""
MIN_SEEDS = 3
"""Training seeds per side a paired comparison of SAE kinds needs before it may state a finding."""
DEGENERATE_WIDTH = 1e-3
"""An interval narrower than this fraction of its largest bound is degenerate (zero width at 3 significant digits):
the units behind it do not vary, e.g. every sequence carries the same position-0 error, and it says nothing about the
spread of the difference; it never supports a verdict."""

Transform = Callable[[np.ndarray], np.ndarray]


class Interval(NamedTuple):
    """A point estimate with a ``level`` interval ``[low, high]`` (NaN bounds when it cannot be computed)."""

    value: float
    low: float
    high: float
    n: int
    """Number of units behind it (sequences for a bootstrap, seeds for a t-interval)."""

    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def degenerate(self) -> bool:
        """True when the interval has (close to) zero width: see :data:`DEGENERATE_WIDTH`."""
        return is_degenerate(self.low, self.high)

    def text(self, fmt: Callable[[float], str] = lambda v: f"{v:.4g}") -> str:
        """``"1.23 [1.1, 1.4]"``, or the value alone when there is no interval."""
        if math.isnan(self.low) or math.isnan(self.high):
            return fmt(self.value)
        return f"{fmt(self.value)} [{fmt(self.low)}, {fmt(self.high)}]"


def is_degenerate(low: float, high: float) -> bool:
    """``high − low <= DEGENERATE_WIDTH · max(|low|, |high|)`` (an interval of width 0 at any scale included)."""
    return bool(high - low <= DEGENERATE_WIDTH * max(abs(low), abs(high)))


def _identity(v: np.ndarray) -> np.ndarray:
    return v


def _log2(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log2(v)


def ratio(num: np.ndarray, den: np.ndarray) -> float:
    """``Σ num / Σ den`` (NaN when the denominator sums to 0)."""
    d = float(np.sum(den))
    return float(np.sum(num)) / d if d != 0 else float("nan")


def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """``[n_boot, n]`` indices of ``n`` units drawn with replacement (numpy ``default_rng(seed)``)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


@functools.lru_cache(maxsize=4)
def bootstrap_counts(n: int, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """``[n_boot, n]`` times each unit is drawn in each replicate of :func:`bootstrap_indices` (cached: every
    metric and SAE evaluated on the same sequences shares the resampling)."""
    idx = bootstrap_indices(n, n_boot, seed)
    counts = np.bincount((np.arange(n_boot)[:, None] * n + idx).ravel(), minlength=n_boot * n)
    out = counts.reshape(n_boot, n).astype(np.float64)
    out.flags.writeable = False
    return out


def _replicates(terms: Sequence[tuple[np.ndarray, np.ndarray]], counts: np.ndarray) -> np.ndarray:
    """``[len(terms), n_boot]`` ratios of each ``(num, den)`` ``[S]`` under the resampling ``counts``
    ``[n_boot, S]``."""
    num = np.stack([n for n, _ in terms])  # [k, S]
    den = np.stack([d for _, d in terms])
    with np.errstate(divide="ignore", invalid="ignore"):
        return (num @ counts.T) / (den @ counts.T)


def _percentiles(point: float, reps: np.ndarray, n: int, level: float) -> Interval:
    reps = reps[np.isfinite(reps)]
    if n < 2 or reps.size == 0:
        return Interval(point, float("nan"), float("nan"), n)
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return Interval(point, float(lo), float(hi), n)


def percentile_interval(point: float, reps: np.ndarray, n: int, level: float = LEVEL) -> Interval:
    """``point`` with the ``level`` percentile interval of the finite bootstrap replicates ``reps`` of ``n`` units
    (NaN bounds with fewer than two units or no finite replicate)."""
    return _percentiles(point, np.asarray(reps, dtype=np.float64), n, level)


def seed_mean_replicates(
    terms: Sequence[tuple[Any, Any]], transform: Transform | None = None, n_boot: int = N_BOOT, seed: int = SEED
) -> np.ndarray:
    """``[n_boot]`` bootstrap replicates over sequences of ``mean_s transform(Σ num_s / Σ den_s)``: several SAEs
    (e.g. seeds) evaluated on the same S sequences, one shared resampling per replicate (that of
    :func:`bootstrap_counts`, so replicates of different SAE kinds on the same sequences are paired)."""
    t = transform or _identity
    arrs = [(np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)) for n, d in terms]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(t(_replicates(arrs, bootstrap_counts(len(arrs[0][0]), n_boot, seed))).mean(axis=0))


def bootstrap_ratio(
    num: Any, den: Any, transform: Transform | None = None, n_boot: int = N_BOOT, seed: int = SEED, level: float = LEVEL
) -> Interval:
    """Percentile bootstrap over sequences of ``transform(Σ num / Σ den)``; ``num, den`` ``[S]``."""
    return bootstrap_mean_difference([(num, den)], [], transform, n_boot, seed, level)


def paired_difference(
    a: tuple[Any, Any],
    b: tuple[Any, Any],
    transform: Transform | None = None,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
) -> Interval:
    """``f(A) − f(B)`` for two SAEs evaluated on the same S sequences (``(num, den)`` each ``[S]``, the same
    order): every replicate resamples the same sequences for both, so what the sequences share cancels."""
    return bootstrap_mean_difference([a], [b], transform, n_boot, seed, level)


def bootstrap_mean_difference(
    a: Sequence[tuple[Any, Any]],
    b: Sequence[tuple[Any, Any]],
    transform: Transform | None = None,
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
) -> Interval:
    """``mean_s f(A_s) − mean_s f(B_s)`` (``f = transform(Σ num / Σ den)``) over several SAEs of each kind (e.g.
    training seeds), all evaluated on the same S sequences; ``b`` empty gives the mean of ``a`` alone. One shared
    resampling of the sequences per replicate."""
    t = transform or _identity
    ta = [(np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)) for n, d in a]
    tb = [(np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)) for n, d in b]
    sizes = {len(n) for n, _ in ta + tb} | {len(d) for _, d in ta + tb}
    if len(sizes) != 1:
        raise ValueError(f"per-sequence arrays of different lengths {sorted(sizes)}: not the same sequences")
    s = sizes.pop()

    def stat(values: np.ndarray) -> np.ndarray:  # [k, ...] ratios -> mean_a f − mean_b f
        fa = t(values[: len(ta)]).mean(axis=0)
        return fa - t(values[len(ta) :]).mean(axis=0) if tb else fa

    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(stat(np.array([[ratio(n, d)] for n, d in ta + tb]))[0])
    reps = stat(_replicates(ta + tb, bootstrap_counts(s, n_boot, seed)))
    return _percentiles(point, reps, s, level)


def t_quantile(p: float, df: int) -> float:
    """Quantile ``p`` (> 0.5) of Student's t with ``df`` degrees of freedom: bisection on its CDF, integrated with
    Simpson's rule (scipy is not a dependency)."""
    if df < 1 or not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs df >= 1 and 0.5 < p < 1, got df={df}, p={p}")
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 4000) -> float:  # P(T <= x) for x >= 0
        h = x / n
        ys = [c * (1 + (h * i) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (ys[0] + ys[-1] + 4 * sum(ys[1:-1:2]) + 2 * sum(ys[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean ± ``t_{(1+level)/2, n-1} · s / √n`` over ``values`` (e.g. one metric of n training seeds); NaN bounds
    for fewer than two finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if v.size < 2:
        return Interval(mean, float("nan"), float("nan"), int(v.size))
    half = t_quantile((1 + level) / 2, v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return Interval(mean, mean - half, mean + half, int(v.size))


def verdict(a: str, b: str, metric: str, diffs: Sequence[Interval]) -> str:
    """``"A lower METRIC than B"`` / ``"A higher ..."`` when every interval of the difference A − B excludes 0 on the
    same side (e.g. the sequence bootstrap and the t-interval over seeds), else :data:`NO_VERDICT`. A degenerate
    (zero-width) interval never yields a verdict."""
    usable = [d for d in diffs if not (math.isnan(d.low) or math.isnan(d.high))]
    if any(d.degenerate() for d in usable):
        return f"{a} vs {b} on {metric}: {NO_VERDICT}"
    if usable and all(d.high < 0 for d in usable):
        return f"{a} lower {metric} than {b}"
    if usable and all(d.low > 0 for d in usable):
        return f"{a} higher {metric} than {b}"
    return f"{a} vs {b} on {metric}: {NO_VERDICT}"


# ---- metrics as ratios of per-sequence sums ------------------------------------------------------------------------
Terms = tuple[np.ndarray, np.ndarray]


def _arr(per_seq: dict[str, Any], key: str) -> np.ndarray:
    if key not in per_seq:
        raise ValueError(f"per-sequence sums have no {key!r} (evaluated without it?)")
    return np.asarray([np.nan if v is None else v for v in per_seq[key]], dtype=np.float64)


def _mse(p: dict[str, Any], d_in: int) -> Terms:
    n = _arr(p, "n")
    present = n > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(present, _arr(p, "sse") / n, 0.0), present * float(d_in)


def _over_tokens(key: str, count: str = "n") -> Callable[[dict[str, Any], int], Terms]:
    return lambda p, _d: (_arr(p, key), _arr(p, count))


def _delta_ce(p: dict[str, Any], _d: int) -> Terms:
    return _arr(p, "ce_spliced") - _arr(p, "ce_clean"), _arr(p, "lm_n")


def _ce_recovered(p: dict[str, Any], _d: int) -> Terms:
    zero = _arr(p, "ce_zero")
    return zero - _arr(p, "ce_spliced"), zero - _arr(p, "ce_clean")


SEQUENCE_METRICS: dict[str, tuple[Callable[[dict[str, Any], int], Terms], Transform | None]] = {
    "mse": (_mse, None),
    "log2_mse": (_mse, _log2),
    "fvu": (_over_tokens("sse", "m2"), None),
    "l0": (_over_tokens("l0"), None),
    "delta_ce": (_delta_ce, None),
    "kl": (_over_tokens("kl", "lm_n"), None),
    "ce_recovered": (_ce_recovered, None),
}
"""Metric of a subset -> (its ``(num, den)`` from the per-sequence sums and ``d_in``, transform). MSE is FAST Eq. 7:
``num_i = sse_i / n_i``, ``den_i = H`` for each sequence with a token in the subset (the mean of per-sequence MSEs)."""


def sequence_terms(per_seq: dict[str, Any], metric: str, d_in: int) -> tuple[Terms, Transform | None]:
    """``((num, den), transform)`` of ``metric`` from one subset's per-sequence sums."""
    if metric not in SEQUENCE_METRICS:
        raise ValueError(f"no per-sequence form of {metric!r}; choose from {', '.join(SEQUENCE_METRICS)}")
    fn, transform = SEQUENCE_METRICS[metric]
    return fn(per_seq, d_in), transform


# ---- evaluation results of several SAEs ----------------------------------------------------------------------------
def result_terms(result: Any, subset: str, metric: str) -> tuple[Terms, Transform | None] | None:
    """``sequence_terms`` of one :class:`~chatsae.eval.result.EvalResult`'s subset; None when the result has no
    per-sequence sums for it (written before schema 2) or the metric has no per-sequence form."""
    per = (getattr(result, "per_sequence", None) or {}).get(subset)
    if not per or metric not in SEQUENCE_METRICS:
        return None
    try:
        return sequence_terms(per, metric, int(result.sae["d_in"]))
    except ValueError:  # e.g. no LM losses computed
        return None


def _bounds(iv: Interval | None) -> list[float] | None:
    if iv is None or math.isnan(iv.low) or math.isnan(iv.high):
        return None
    return [iv.low, iv.high]


def seed_summary(
    results: Sequence[Any],
    keys: dict[str, tuple[str, str]],
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
) -> dict[str, dict[str, Any]]:
    """One SAE configuration trained with several seeds, each evaluated on the same sequences: per summary key
    (``keys[key] = (subset, metric)``) the ``mean`` over seeds, the t-interval over seeds (``seeds``, None with one
    seed) and the bootstrap over sequences of the seed mean (``sequences``, None without per-sequence sums)."""
    out = {}
    for key, (subset, metric) in keys.items():
        values = [r.metrics.get(subset, {}).get(metric) for r in results]
        over_seeds = t_interval([v for v in values if isinstance(v, (int, float))], level)
        terms = [result_terms(r, subset, metric) for r in results]
        present = [t for t in terms if t is not None]
        boot = None
        if terms and len(present) == len(terms):
            boot = bootstrap_mean_difference([t[0] for t in present], [], present[0][1], n_boot, seed, level)
        out[key] = {
            "mean": None if math.isnan(over_seeds.value) else over_seeds.value,
            "n_seeds": over_seeds.n,
            "seeds": _bounds(over_seeds),
            "sequences": _bounds(boot),
        }
    return out


def paired_verdict(
    a: Sequence[Any],
    b: Sequence[Any],
    subset: str,
    metric: str,
    names: tuple[str, str, str],
    n_boot: int = N_BOOT,
    seed: int = SEED,
    level: float = LEVEL,
    min_seeds: int = MIN_SEEDS,
) -> dict[str, Any]:
    """Compare SAE kind A (its seeds' results ``a``) with B on ``metric`` of ``subset``, all evaluated on the same
    sequences: the paired bootstrap over sequences of ``mean_s f(A_s) − mean_s f(B_s)`` and, with two or more seeds
    each, the t-interval over seeds of ``f(A_s) − f(B_s)``. ``names`` = (A label, B label, metric label).

    A finding ("A lower ... than B") needs ``min_seeds`` seeds on each side and both intervals, neither degenerate,
    excluding 0 on the same side; otherwise the verdict ends with :data:`NO_VERDICT` and ``why`` says what is
    missing. Returns ``{"difference", "sequences", "seeds", "n_seeds", "verdict", "why"}``."""
    ta, tb = [result_terms(r, subset, metric) for r in a], [result_terms(r, subset, metric) for r in b]
    pa, pb = [t for t in ta if t is not None], [t for t in tb if t is not None]
    boot = None
    if ta and tb and len(pa) == len(ta) and len(pb) == len(tb):
        boot = bootstrap_mean_difference([t[0] for t in pa], [t[0] for t in pb], pa[0][1], n_boot, seed, level)
    va = [r.metrics.get(subset, {}).get(metric) for r in a]
    vb = [r.metrics.get(subset, {}).get(metric) for r in b]
    pairs = [x - y for x, y in zip(va, vb, strict=False) if isinstance(x, (int, float)) and isinstance(y, (int, float))]
    seeds = t_interval(pairs, level) if min(len(a), len(b)) >= 2 else None
    mean = float(np.mean(pairs)) if pairs else None
    n_seeds = min(len(a), len(b))
    no = f"{names[0]} vs {names[1]} on {names[2]}: {NO_VERDICT}"
    why = verdict_gate(n_seeds, boot, seeds, min_seeds)
    return {
        "difference": boot.value if boot is not None else mean,
        "sequences": _bounds(boot),
        "seeds": _bounds(seeds),
        "n_seeds": n_seeds,
        "verdict": no if why else verdict(*names, [iv for iv in (boot, seeds) if iv is not None]),
        "why": why or None,
    }


def verdict_gate(n_seeds: int, items: Interval | None, over_seeds: Interval | None, min_seeds: int = MIN_SEEDS) -> str:
    """Why a paired comparison may not state a finding ('' when it may): fewer than ``min_seeds`` seeds, an interval
    over items (sequences) or over seeds missing or degenerate (zero width), or an interval that includes 0."""
    if n_seeds < min_seeds:
        return f"{n_seeds} seed{'s' * (n_seeds != 1)}; a finding needs {min_seeds} or more"
    for what, iv in (("sequences", items), ("seeds", over_seeds)):
        if iv is None or math.isnan(iv.low) or math.isnan(iv.high):
            return f"no interval over {what}"
        if iv.degenerate():
            return f"the interval over {what} has zero width"
    assert items is not None and over_seeds is not None  # checked in the loop
    if not (items.excludes_zero() and over_seeds.excludes_zero()):
        return "an interval includes 0"
    if (items.low > 0) != (over_seeds.low > 0):
        return "the intervals exclude 0 on opposite sides"
    return ""
