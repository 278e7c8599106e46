"""Intervals and verdicts (chatsae.eval.stats) against naive loops and hand values; per-sequence sums of the
accumulators reproduce their metrics; the strict special subset; the eval JSON keeps per-sequence sums."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from chatsae.eval import metrics as M
from chatsae.eval import stats as S
from chatsae.eval.result import EvalResult, read_result, write_result
from chatsae.eval.streaming import SubsetAccumulator


def naive_bootstrap(terms, n_boot, seed, transform=lambda v: v, level=0.95):
    """Loop version: draw the same indices, recompute ``mean_a f − mean_b f`` per replicate, take percentiles."""
    a, b = terms
    n = len(a[0][0])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    reps = []
    for r in range(n_boot):
        vals = []
        for group in (a, b):
            fs = []
            for num, den in group:
                fs.append(transform(sum(num[i] for i in idx[r]) / sum(den[i] for i in idx[r])))
            vals.append(sum(fs) / len(fs) if fs else 0.0)
        reps.append(vals[0] - vals[1])
    return np.percentile(reps, [100 * (1 - level) / 2, 100 * (1 + level) / 2])


@pytest.fixture
def seqs():
    rng = np.random.default_rng(1)
    den = rng.integers(1, 30, size=40).astype(float)
    num_a = den * rng.gamma(2.0, 1.0, size=40)
    num_b = num_a * (1.2 + 0.1 * rng.standard_normal(40))  # B worse than A on every sequence, noisy
    return (num_a, den), (num_b, den)


def test_bootstrap_ratio_equals_naive_loop(seqs):
    (num, den), _ = seqs
    iv = S.bootstrap_ratio(num, den, n_boot=300, seed=5)
    lo, hi = naive_bootstrap(([(num, den)], []), 300, 5)
    assert iv.value == pytest.approx(num.sum() / den.sum())
    assert (iv.low, iv.high) == pytest.approx((lo, hi), rel=1e-12)
    assert iv.low < iv.value < iv.high and iv.n == 40
    logged = S.bootstrap_ratio(num, den, transform=np.log2, n_boot=300, seed=5)
    lo2, hi2 = naive_bootstrap(([(num, den)], []), 300, 5, transform=math.log2)
    assert (logged.low, logged.high) == pytest.approx((lo2, hi2), rel=1e-12)
    assert (logged.low, logged.high) == pytest.approx((math.log2(lo), math.log2(hi)), abs=1e-3)  # ~monotone map


def test_paired_difference_equals_naive_loop_and_is_tighter(seqs):
    a, b = seqs
    iv = S.paired_difference(a, b, n_boot=300, seed=2)
    lo, hi = naive_bootstrap(([a], [b]), 300, 2)
    assert (iv.low, iv.high) == pytest.approx((lo, hi), rel=1e-10)
    assert iv.value == pytest.approx(S.ratio(*a) - S.ratio(*b))
    assert iv.high < 0 and iv.excludes_zero()
    # unpaired: each SAE's own interval overlaps the other's, the paired one still separates them
    ia, ib = S.bootstrap_ratio(*a), S.bootstrap_ratio(*b)
    assert ia.high > ib.low
    # several SAEs per kind (training seeds): the mean over them, one shared resampling
    many = S.bootstrap_mean_difference([a, b], [b], n_boot=200, seed=3)
    lo, hi = naive_bootstrap(([a, b], [b]), 200, 3)
    assert (many.low, many.high) == pytest.approx((lo, hi), rel=1e-10)
    with pytest.raises(ValueError, match="not the same sequences"):
        S.paired_difference(a, (b[0][:-1], b[1][:-1]))


def test_bootstrap_coverage_on_synthetic_sequences():
    """Sequences drawn from a known population: the 95% interval covers the true ratio about 95% of the time."""
    rng = np.random.default_rng(0)
    true, covered, trials = 2.0, 0, 200
    for t in range(trials):
        den = rng.integers(5, 50, size=60).astype(float)
        num = den * true + rng.normal(0, 3.0, size=60) * np.sqrt(den)
        iv = S.bootstrap_ratio(num, den, n_boot=400, seed=t)
        covered += iv.low <= true <= iv.high
    assert 0.88 <= covered / trials <= 0.99


def test_t_quantile_and_interval_against_table_values():
    for df, q in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)):
        assert S.t_quantile(0.975, df) == pytest.approx(q, abs=2e-4)
    assert S.t_quantile(0.95, 3) == pytest.approx(2.3534, abs=2e-4)
    values = [1.0, 2.0, 4.0]
    iv = S.t_interval(values)
    mean, sd = 7 / 3, math.sqrt(sum((v - 7 / 3) ** 2 for v in values) / 2)
    assert iv.value == pytest.approx(mean)
    assert iv.high - mean == pytest.approx(4.3027 * sd / math.sqrt(3), rel=1e-4)
    one = S.t_interval([3.0, None, float("nan")])
    assert one.value == 3.0 and math.isnan(one.low) and one.n == 1
    assert one.text() == "3"
    assert iv.text() == f"{mean:.4g} [{iv.low:.4g}, {iv.high:.4g}]"


def test_verdict():
    lower = S.Interval(-1.0, -2.0, -0.5, 10)
    straddle = S.Interval(-1.0, -2.0, 0.5, 10)
    nan = S.Interval(-1.0, float("nan"), float("nan"), 1)
    assert S.verdict("FAST", "BT(F)", "MSE_st", [lower]) == "FAST lower MSE_st than BT(F)"
    assert S.verdict("FAST", "BT(F)", "MSE_st", [lower, nan]) == "FAST lower MSE_st than BT(F)"
    assert S.verdict("A", "B", "L0", [S.Interval(1, 0.5, 2, 5)]) == "A higher L0 than B"
    zero_width = S.Interval(4.411, 4.411, 4.411, 50)  # every sequence the same: a degenerate bootstrap
    for diffs in ([lower, straddle], [nan], [], [zero_width], [lower, zero_width]):
        assert S.verdict("FAST", "BT(F)", "MSE_st", diffs).endswith(S.NO_VERDICT)
    assert S.Interval(4.411, 4.4109, 4.4112, 50).degenerate() and not S.Interval(4.4, 4.3, 4.5, 50).degenerate()


# ---- per-sequence sums ---------------------------------------------------------------------------------------------
@pytest.fixture
def accumulated():
    """Ten sequences of 3-9 tokens through a SubsetAccumulator in uneven batches, with LM losses and token ids."""
    torch.manual_seed(0)
    lens = [3, 9, 4, 7, 5, 8, 6, 3, 9, 5]
    seq_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])
    positions = torch.cat([torch.arange(n) for n in lens])
    n = len(seq_ids)
    x = torch.randn(n, 6) * 3 + 5
    x[positions == 0] *= 40  # an attention-sink-like position 0
    x_hat = x + torch.randn(n, 6)
    f = torch.relu(torch.randn(n, 12))
    token_ids = torch.randint(0, 20, (n,))
    token_class = torch.where(token_ids < 8, M.TEMPLATE, M.ASSISTANT)
    losses = {
        "ce_clean": torch.rand(n) + 1,
        "ce_spliced": torch.rand(n) + 1.3,
        "kl": torch.rand(n),
        "ce_zero": torch.rand(n) + 5,
    }
    acc = SubsetAccumulator(d_sae=12, special_ids=[0, 1, 2, 3])
    for a, b in ((0, 5), (5, 6), (6, 30), (30, n)):
        acc.update(x[a:b], x_hat[a:b], f[a:b], token_class[a:b], positions[a:b], seq_ids[a:b], token_ids[a:b])
        acc.update_lm(
            token_class[a:b], positions[a:b], seq_ids[a:b], token_ids[a:b], **{k: v[a:b] for k, v in losses.items()}
        )
    return acc, x, x_hat, token_ids, token_class, positions


@pytest.mark.parametrize("subset", ["all", "all_no_pos0", "special", "special_strict"])
def test_per_sequence_sums_reproduce_the_metrics(accumulated, subset):
    acc, x, *_ = accumulated
    res, per = acc.result()[subset], acc.per_sequence()[subset]
    assert len(per["n"]) == 10 and sum(per["n"]) == res["tokens"]
    for metric in ("mse", "log2_mse", "fvu", "l0", "delta_ce", "kl", "ce_recovered"):
        (num, den), transform = S.sequence_terms(per, metric, d_in=6)
        value = S.ratio(num, den)
        value = float(transform(np.array(value))) if transform else value
        assert value == pytest.approx(res[metric], rel=1e-9), metric


def test_strict_subset_is_the_special_ids(accumulated):
    acc, _, _, token_ids, token_class, positions = accumulated
    res = acc.result()
    strict = (token_ids < 4) & (token_class == M.TEMPLATE)
    assert 0 < int(strict.sum()) < int((token_class == M.TEMPLATE).sum())
    assert res["special_strict"]["tokens"] == int(strict.sum())
    assert res["special_strict_no_pos0"]["tokens"] == int((strict & (positions != 0)).sum())
    assert res["special_strict"]["lm_tokens"] == int(strict.sum())
    # no token ids: the strict subsets are empty, the template set unchanged
    plain = SubsetAccumulator(d_sae=4)
    plain.update(
        torch.ones(3, 2),
        torch.zeros(3, 2),
        torch.ones(3, 4),
        torch.full((3,), M.TEMPLATE),
        torch.arange(3),
        torch.zeros(3, dtype=torch.long),
    )
    assert plain.result()["special_strict"]["tokens"] == 0 and plain.result()["special"]["tokens"] == 3


def test_eval_json_keeps_per_sequence_sums_compactly(accumulated, tmp_path):
    acc = accumulated[0]
    res = EvalResult({"d_in": 6}, {"sequences": 10}, acc.result(), {}, acc.per_sequence())
    path = write_result(res, tmp_path / "eval.json")
    text = path.read_text()
    assert json.loads(text)["per_sequence"]["all"]["n"] == acc.per_sequence()["all"]["n"]
    assert '"n": [3, 9, 4, 7,' in text  # one line per list
    assert "text" not in res.per_sequence and "special" in res.per_sequence  # subsets without tokens left out
    back = read_result(path)
    (num, den), _ = S.sequence_terms(back.per_sequence["all_no_pos0"], "fvu", 6)
    assert S.ratio(num, den) == pytest.approx(res.metrics["all_no_pos0"]["fvu"], rel=1e-6)
    rows = list(res.table_rows())
    assert rows[:3] == ["held-out eval, position 0 excluded", "eval L0", "eval fvu"]  # trained-on tokens first
    assert rows.index("with position 0 (attention sink)") < rows.index("eval mse (pos 0 incl.)")
    assert res.table_rows()["eval fvu"] == f"{res.metrics['all_no_pos0']['fvu']:.4g}"
    assert res.table_rows()["eval fvu (pos 0 incl.)"] == f"{res.metrics['all']['fvu']:.4g}"
    old = EvalResult.from_dict({"sae": {}, "setup": {}, "metrics": {}})  # schema 1 files: no per-sequence sums
    assert old.per_sequence == {}


def test_docs_show_the_strict_and_template_sets_as_the_code_makes_them(chat_tokenizer):
    from pathlib import Path

    from chatsae.eval.report import token_sets_example

    table = token_sets_example(chat_tokenizer)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    assert table in docs
    rows = table.splitlines()[2:]
    strict = [r for r in rows if r.endswith("| x | x |")]
    template = [r for r in rows if r.endswith("| x |")]
    assert all("im_start" in r or "im_end" in r for r in strict)
    assert f"{len(rows)} tokens, {len(strict)} are in the strict set and {len(template)} in the template set" in docs


def test_seed_rows_intervals_and_error_bars(accumulated):
    from types import SimpleNamespace

    from chatsae.workflows.compare import seed_list, seed_row, seed_run, seeded
    from chatsae.workflows.compare_report import error_bounds, interval_text

    acc = accumulated[0]
    base = EvalResult({"d_in": 6}, {"tokens": 1}, acc.result(), {}, acc.per_sequence())
    worse = EvalResult(
        {"d_in": 6},
        {"tokens": 1},
        json.loads(json.dumps(base.metrics)),
        {},
        {s: {**v, "sse": [2 * e for e in v["sse"]]} for s, v in base.per_sequence.items()},
    )
    worse.metrics["all"]["log2_mse"] += 1.0  # twice the squared error: log2 MSE one higher
    row = seed_row([base, worse])
    assert row["seeds"] == 2 and row["log2_mse"] == pytest.approx(base.metrics["all"]["log2_mse"] + 0.5)
    iv = row["intervals"]["log2_mse"]
    assert iv["seeds"] == pytest.approx([row["log2_mse"] - 12.7062 * 0.5, row["log2_mse"] + 12.7062 * 0.5], rel=1e-4)
    assert iv["sequences"][0] < row["log2_mse"] < iv["sequences"][1]
    assert error_bounds(row, "log2_mse") == (iv["seeds"][0], iv["seeds"][1])  # the wider of the two
    assert interval_text(row, "log2_mse").count("[") == 2 and "; seeds [" in interval_text(row, "log2_mse")
    one = seed_row([base])
    assert one["log2_mse"] == base.metrics["all"]["log2_mse"] and one["intervals"]["log2_mse"]["seeds"] is None
    assert seed_list(3, 42) == [42, 43, 44] and seed_run("fast_jumprelu", 0, 42) == "fast_jumprelu"
    assert seed_run("fast_jumprelu", 2, 44) == "fast_jumprelu_seed44"
    with pytest.raises(ValueError, match="--seeds"):
        seed_list(0, 42)

    @dataclasses.dataclass
    class TC:
        seed: int = 42

    study = SimpleNamespace(train_cfg=TC())
    with seeded(study, 7):
        assert study.train_cfg.seed == 7
    assert study.train_cfg.seed == 42
