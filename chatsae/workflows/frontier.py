"""Comparing two sparsity-fidelity frontiers at matched L0, with intervals over evaluation sequences and training
seeds, and the verdict rule of :func:`chatsae.eval.stats.verdict_gate` (a finding needs 3 or more seeds and both
intervals excluding 0; otherwise "no verdict at this budget")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..eval import stats

Point = tuple[Any, Any]


class FrontierGap(NamedTuple):
    """How a reference frontier compares with another one at matched L0 (log-spaced points of the shared range)."""

    l0_low: float
    l0_high: float
    n_points: int
    wins: int
    """Points where the reference is lower (better)."""
    mean_diff: float
    """Mean of reference minus other (negative: the reference is better)."""
    pattern: str
    """Of the mean points: lower at every point | higher at every point | mixed (a description, not a finding)."""
    verdict: str = stats.NO_VERDICT
    """ahead | behind (the mean difference, with intervals over sequences and seeds excluding 0 and 3+ seeds) |
    :data:`chatsae.eval.stats.NO_VERDICT`."""
    why: str | None = "no intervals"
    """Why there is no verdict (None when there is one)."""
    n_seeds: int = 0
    sequences: list[float] | None = None
    """95% bootstrap interval over evaluation sequences of ``mean_diff``."""
    seeds: list[float] | None = None
    """95% t-interval over training seeds of each seed's own ``mean_diff``."""


def clean_points(points: Sequence[Point]) -> list[tuple[float, float]]:
    """The finite ``(L0 > 0, y)`` points, sorted by L0."""
    ok = [(float(x), float(y)) for x, y in points if isinstance(x, (int, float)) and isinstance(y, (int, float))]
    return sorted((x, y) for x, y in ok if math.isfinite(x) and math.isfinite(y) and x > 0)


def gap_diffs(a: Sequence[Point], b: Sequence[Point], low: float, high: float, n_points: int) -> np.ndarray:
    """``y_a − y_b`` interpolated linearly in log L0 at ``n_points`` log-spaced L0 values of ``[low, high]``."""
    ca, cb = clean_points(a), clean_points(b)
    grid = np.log(np.geomspace(low, high, n_points))
    ya = np.interp(grid, np.log([x for x, _ in ca]), [y for _, y in ca])
    yb = np.interp(grid, np.log([x for x, _ in cb]), [y for _, y in cb])
    return np.asarray(ya - yb)


def frontier_gap(ref: Sequence[Point], other: Sequence[Point], n_points: int = 9) -> FrontierGap | None:
    """Compare two frontiers given as ``(L0, y)`` points (lower y is better): y is linearly interpolated in log L0
    at ``n_points`` log-spaced L0 values of the range both frontiers cover. None if either has fewer than two
    usable points or the ranges do not overlap. Point values only: the verdict stays "no verdict" (see
    :func:`with_intervals`)."""
    a, b = clean_points(ref), clean_points(other)
    if len(a) < 2 or len(b) < 2:
        return None
    low, high = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])
    if not low < high:
        return None
    diff = gap_diffs(a, b, low, high, n_points)
    wins = int((diff < 0).sum())
    pattern = "lower at every point" if wins == n_points else "higher at every point" if (diff > 0).all() else "mixed"
    return FrontierGap(low, high, n_points, wins, float(diff.mean()), pattern)


class Side(NamedTuple):
    """One architecture's frontier: per setting its mean L0, its seeds' ``(L0, y)`` values and its seeds'
    per-sequence terms of y (``None`` when a seed has none)."""

    l0: list[float]
    per_seed: list[list[Point]]
    """``per_seed[setting][seed] = (L0, y)``."""
    terms: list[list[Any]]
    """``terms[setting][seed] = ((num, den), transform) | None`` (:func:`chatsae.eval.stats.result_terms`)."""


def seed_gaps(gap: FrontierGap, ref: Side, other: Side) -> list[float]:
    """Each seed's own mean difference on the mean points' L0 grid (seed i of the reference against seed i of the
    other; as many as the fewer seeds)."""
    n = min(len(s) for side in (ref, other) for s in side.per_seed)
    out = []
    for i in range(n):
        a, b = [s[i] for s in ref.per_seed], [s[i] for s in other.per_seed]
        if len(clean_points(a)) >= 2 and len(clean_points(b)) >= 2:
            out.append(float(gap_diffs(a, b, gap.l0_low, gap.l0_high, gap.n_points).mean()))
    return out


def sequence_replicates(gap: FrontierGap, ref: Side, other: Side) -> np.ndarray | None:
    """``[n_boot]`` replicates of the mean difference: every setting's seed-mean y recomputed on the same resampled
    sequences (L0 kept at the mean points); None when a setting has no per-sequence terms."""
    reps = []
    for side in (ref, other):
        per_setting = []
        for terms in side.terms:
            if not terms or any(t is None for t in terms):
                return None
            per_setting.append(stats.seed_mean_replicates([t[0] for t in terms], terms[0][1]))
        reps.append(np.stack(per_setting, axis=1))  # [n_boot, settings]
    out = np.full(reps[0].shape[0], np.nan)
    for r in range(out.size):
        a, b = list(zip(ref.l0, reps[0][r], strict=True)), list(zip(other.l0, reps[1][r], strict=True))
        if len(clean_points(a)) >= 2 and len(clean_points(b)) >= 2:
            out[r] = gap_diffs(a, b, gap.l0_low, gap.l0_high, gap.n_points).mean()
    return out


def with_intervals(gap: FrontierGap, ref: Side, other: Side) -> FrontierGap:
    """``gap`` with its intervals over sequences and seeds and the verdict they allow."""
    over_seeds = stats.t_interval(seed_gaps(gap, ref, other))
    reps = sequence_replicates(gap, ref, other)
    items = None
    if reps is not None:
        n_sequences = len(ref.terms[0][0][0][0])  # setting 0, seed 0, (num, den), num
        items = stats.percentile_interval(gap.mean_diff, reps, n_sequences)
    seeds_iv = over_seeds if over_seeds.n >= 2 else None
    why = stats.verdict_gate(over_seeds.n, items, seeds_iv)
    verdict = stats.NO_VERDICT if why else "ahead" if items is not None and items.high < 0 else "behind"
    return gap._replace(
        verdict=verdict, why=why or None, n_seeds=over_seeds.n, sequences=bounds(items), seeds=bounds(seeds_iv)
    )


def bounds(iv: stats.Interval | None) -> list[float] | None:
    """``[low, high]``, or None without an interval."""
    return None if iv is None or math.isnan(iv.low) or math.isnan(iv.high) else [iv.low, iv.high]
