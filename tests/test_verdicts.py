"""Verdict discipline of compare and sweep: a difference is a finding only with 3+ seeds and intervals over
sequences and seeds that exclude 0 and are not degenerate; one seed or a zero-width interval never gives one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chatsae.eval import stats as S
from chatsae.eval.result import EvalResult
from chatsae.workflows.compare import method_verdicts
from chatsae.workflows.compare_report import verdict_lines
from chatsae.workflows.frontier import Side, frontier_gap, with_intervals

D_IN = 4


def result(sse: list[float], n: list[float]) -> EvalResult:
    """An evaluation with per-sequence sums of subset ``all``: log2 MSE (FAST Eq. 7) from ``sse`` and ``n``."""
    mse = float(np.mean(np.asarray(sse) / np.asarray(n))) / D_IN
    per = {"n": n, "sse": sse, "m2": [10.0 * s for s in sse], "l0": [1.0] * len(n)}
    return EvalResult({"d_in": D_IN}, {}, {"all": {"log2_mse": math.log2(mse), "mse": mse}}, {}, {"all": per})


def seeds_of(scale: float, n_seeds: int, n_seq: int = 40, noise: float = 0.3, seed: int = 0) -> list[EvalResult]:
    rng = np.random.default_rng(seed)
    n = rng.integers(5, 30, size=n_seq).astype(float)
    base = n * rng.gamma(4.0, 1.0, size=n_seq)
    out = []
    for s in range(n_seeds):
        jitter = 1 + 0.02 * (s - (n_seeds - 1) / 2)  # seeds differ a little
        err = base * scale * jitter * (1 + noise * rng.standard_normal(n_seq).clip(-2, 2) / 3)
        out.append(result([float(v) for v in err], [float(v) for v in n]))
    return out


NAMES = ("FAST", "BT(F)", "MSE")


def test_one_seed_never_gives_a_verdict_even_with_a_separating_bootstrap():
    a, b = seeds_of(1.0, 1), seeds_of(2.0, 1)
    v = S.paired_verdict(a, b, "all", "log2_mse", NAMES)
    assert v["sequences"] is not None and v["sequences"][1] < 0  # the bootstrap alone would separate them
    assert v["seeds"] is None and v["n_seeds"] == 1
    assert v["verdict"] == "FAST vs BT(F) on MSE: no verdict at this budget"
    assert v["why"] == "1 seed; a finding needs 3 or more"


def test_zero_width_bootstrap_never_gives_a_verdict():
    # every sequence carries the same (position-0-like) error: each resample gives the same ratio
    n = [1.0] * 30
    a = [result([4.0 * (1 + 0.01 * s)] * 30, n) for s in range(3)]
    b = [result([1.0 * (1 + 0.05 * s)] * 30, n) for s in range(3)]
    v = S.paired_verdict(a, b, "all", "log2_mse", NAMES)
    lo, hi = v["sequences"]
    assert hi - lo == pytest.approx(0.0, abs=1e-12)  # [2.03, 2.03]-like: degenerate
    assert v["seeds"] is not None and v["seeds"][0] > 0  # the seeds alone would say A higher
    assert v["verdict"].endswith(S.NO_VERDICT) and v["why"] == "the interval over sequences has zero width"


def test_three_seeds_with_a_clear_separation_give_a_verdict_checked_by_hand():
    a, b = seeds_of(1.0, 3, seed=1), seeds_of(2.0, 3, seed=1, noise=0.4)  # twice A's error: log2 difference ~ -1
    v = S.paired_verdict(a, b, "all", "log2_mse", NAMES)
    assert v["verdict"] == "FAST lower MSE than BT(F)" and v["why"] is None and v["n_seeds"] == 3
    diffs = [x.metrics["all"]["log2_mse"] - y.metrics["all"]["log2_mse"] for x, y in zip(a, b, strict=True)]
    mean, sd = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2), from a table
    assert v["seeds"] == pytest.approx([mean - half, mean + half], rel=1e-4)
    assert v["difference"] == pytest.approx(mean, rel=1e-6) and -1.2 < mean < -0.8
    lines = verdict_lines([{"arch": "jumprelu", "a": "fast", "b": "bt-f", "metric": "log2_mse", **v}])
    assert lines[0].startswith("- JumpReLU: FAST lower MSE than BT(F) (difference") and "over seeds [" in lines[0]


def test_three_seeds_without_separation_and_the_report_lines():
    a, b = seeds_of(1.0, 3, seed=2), seeds_of(1.0, 3, seed=2, noise=0.31)
    out = method_verdicts({"fast": {"jumprelu": a}, "bt-f": {"jumprelu": b}}, {"mse": "MSE"})
    (v,) = out
    assert v["verdict"].endswith(S.NO_VERDICT) and v["why"] in {
        "an interval includes 0",
        "the intervals exclude 0 on opposite sides",
    }
    one = method_verdicts({"fast": {"jumprelu": a[:1]}, "bt-f": {"jumprelu": b[:1]}}, {"mse": "MSE"})
    line = verdict_lines(one)[0]
    assert "no verdict at this budget" in line and "1 seed; a finding needs 3 or more" in line


def test_verdict_gate_reasons():
    ok = S.Interval(-1.0, -1.2, -0.8, 40)
    assert S.verdict_gate(3, ok, ok) == ""
    assert S.verdict_gate(2, ok, ok) == "2 seeds; a finding needs 3 or more"
    assert S.verdict_gate(3, None, ok) == "no interval over sequences"
    assert S.verdict_gate(3, ok, S.Interval(-1.0, -1.0, -1.0, 3)) == "the interval over seeds has zero width"
    assert S.verdict_gate(3, ok, S.Interval(-1.0, -2.0, 0.1, 3)) == "an interval includes 0"
    assert S.verdict_gate(3, ok, S.Interval(1.0, 0.5, 1.5, 3)) == "the intervals exclude 0 on opposite sides"


# ---- sweep frontiers -----------------------------------------------------------------------------------------------
def side(scales: list[float], l0s: list[float], n_seeds: int, seed: int, noise: float = 0.3) -> Side:
    """A frontier: one setting per (scale, L0), y = log2 MSE of results whose error is ``scale`` times a base."""
    per_setting = [seeds_of(sc, n_seeds, seed=seed, noise=noise) for sc in scales]
    return Side(
        l0s,
        [[(l0, r.metrics["all"]["log2_mse"]) for r in rs] for l0, rs in zip(l0s, per_setting, strict=True)],
        [[S.result_terms(r, "all", "log2_mse") for r in rs] for rs in per_setting],
    )


def mean_points(s: Side) -> list[tuple[float, float]]:
    return [(x, float(np.mean([y for _, y in pts]))) for x, pts in zip(s.l0, s.per_seed, strict=True)]


@pytest.mark.parametrize("n_seeds, verdict", [(3, "ahead"), (2, S.NO_VERDICT), (1, S.NO_VERDICT)])
def test_frontier_verdict_needs_three_seeds(n_seeds, verdict):
    ref = side([1.0, 0.5], [10.0, 100.0], n_seeds, seed=3)  # JumpReLU: half the error of the other at each L0
    other = side([2.0, 1.0], [10.0, 100.0], n_seeds, seed=3, noise=0.4)
    gap = frontier_gap(mean_points(ref), mean_points(other))
    assert gap is not None and gap.pattern == "lower at every point" and gap.verdict == S.NO_VERDICT
    full = with_intervals(gap, ref, other)
    assert full.verdict == verdict and full.n_seeds == n_seeds
    assert full.sequences is not None and full.sequences[1] < 0  # the bootstrap separates them at every count
    if n_seeds >= 2:
        # each seed's own mean difference (both frontiers share the L0 values, so no interpolation), t over seeds
        per_seed = [
            float(np.mean([ref.per_seed[k][i][1] - other.per_seed[k][i][1] for k in range(2)])) for i in range(n_seeds)
        ]
        iv = S.t_interval(per_seed)
        assert full.seeds == pytest.approx([iv.low, iv.high])
    else:
        assert full.seeds is None and full.why == "1 seed; a finding needs 3 or more"


def test_identical_seed_differences_are_a_zero_width_seed_interval():
    a, b = seeds_of(1.0, 3, seed=1), seeds_of(2.0, 3, seed=1)  # the same noise: every seed differs by exactly -1
    v = S.paired_verdict(a, b, "all", "log2_mse", NAMES)
    assert v["seeds"][1] - v["seeds"][0] == pytest.approx(0.0, abs=1e-9)  # B/A the same on every sequence too
    assert v["verdict"].endswith(S.NO_VERDICT) and v["why"].endswith("has zero width")
