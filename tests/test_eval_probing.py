"""Sparse probing (chatsae.eval.probing): logistic regression against its optimality condition and a hand-solved
case, SAEBench's latent selection order, intervals, one-vs-rest sampling and the streaming helpers."""

from __future__ import annotations

import math
import random

import pytest
import torch

from chatsae.eval.probing import (
    Reservoir,
    bootstrap_mean_accuracy,
    fit_logistic,
    mean_pool,
    one_vs_rest,
    probe_task,
    reservoir_sample,
    sparse_probe,
    top_k_mean_diff,
    wilson_interval,
)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_fit_logistic_matches_hand_solved_symmetric_case():
    # x = -2, -1, 1, 2 with labels 0, 0, 1, 1: by symmetry b = 0, and w solves C * sum x_i (s(w x_i) - y_i) + w = 0,
    # i.e. w = 2 * C * (2 (1 - s(2w)) + (1 - s(w))). Solve that scalar equation by bisection, independently.
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    y = torch.tensor([0, 0, 1, 1])

    def g(w: float) -> float:
        return w - 2 * (2 * (1 - _sigmoid(2 * w)) + (1 - _sigmoid(w)))

    lo, hi = 0.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if g(mid) < 0 else (lo, mid)
    probe = fit_logistic(x, y, c=1.0)
    assert probe.weight.item() == pytest.approx(lo, abs=1e-6)
    assert probe.bias == pytest.approx(0.0, abs=1e-6)


def test_fit_logistic_gradient_vanishes_with_class_weights():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=gen)
    y = (x[:, 0] + 0.5 * torch.randn(60, generator=gen) > 0.8).long()  # imbalanced
    probe = fit_logistic(x, y, c=0.5, balanced=True)
    n, n_pos = len(y), int(y.sum())
    s = torch.where(y == 1, n / (2 * n_pos), n / (2 * (n - n_pos))).double()
    r = s * (torch.sigmoid(probe.logits(x)) - y.double())
    grad_w = 0.5 * (x.double().T @ r) + probe.weight
    grad_b = 0.5 * r.sum()
    assert grad_w.abs().max() < 1e-5 and abs(float(grad_b)) < 1e-5


def test_top_k_mean_diff_order_by_hand():
    # class means (pos - neg): col0 0.5, col1 -3, col2 2, col3 0 -> |diff| order 1, 2, 0, 3
    x = torch.tensor([[1.0, 0.0, 3.0, 1.0], [0.0, 0.0, 3.0, 1.0], [0.0, 3.0, 1.0, 1.0], [0.0, 3.0, 1.0, 1.0]])
    y = torch.tensor([1, 1, 0, 0])
    assert top_k_mean_diff(x, y, 4).tolist() == [1, 2, 0, 3]
    assert top_k_mean_diff(x, y, 2).tolist() == [1, 2]


def test_sparse_probe_separable_k1_latent_and_accuracy():
    # latent 3 alone separates the classes; latent 0 has a bigger mean difference at k=2 but noise only.
    gen = torch.Generator().manual_seed(1)
    n = 80
    y = torch.arange(n) % 2
    x = torch.rand(n, 6, generator=gen) * 0.1
    x[:, 3] += 2.0 * y  # mean difference 2
    x[:, 0] += torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, 0.0)  # mean difference ~0, noise
    res = sparse_probe(x[:60], y[:60], x[60:], y[60:], ks=[1, 2])
    score1, correct1 = res[1]
    assert score1.features == [3]
    assert score1.accuracy == 1.0 and score1.n == 20 and bool(correct1.all())
    assert res[2][0].features[0] == 3 and len(res[2][0].features) == 2


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)  # textbook value: 0.4902, 0.9433
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)


def test_bootstrap_mean_accuracy_brackets_the_mean():
    a = torch.tensor([True] * 9 + [False])
    b = torch.tensor([True] * 5 + [False] * 5)
    lo, hi = bootstrap_mean_accuracy([a, b], n_boot=2000, seed=0)
    assert lo < 0.7 < hi and lo > 0.4 and hi < 0.95
    assert bootstrap_mean_accuracy([torch.ones(4, dtype=torch.bool)]) == (1.0, 1.0)


def test_one_vs_rest_balanced_and_from_every_class():
    by_class = {"a": torch.full((6, 1), 0.0), "b": torch.full((20, 1), 1.0), "c": torch.full((20, 1), 2.0)}
    x, y = one_vs_rest(by_class, "a", torch.Generator().manual_seed(0))
    assert int(y.sum()) == 6 and len(y) == 12
    assert bool((x[y == 1] == 0).all())
    assert set(x[y == 0, 0].tolist()) == {1.0, 2.0}  # 3 from each other class


def test_mean_pool_by_hand():
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])
    sums, counts = mean_pool(values, torch.tensor([0, 0, 2]), 3)
    assert counts.tolist() == [2, 0, 1]
    assert sums.tolist() == [[4.0, 6.0], [0.0, 0.0], [10.0, 0.0]]


def test_reservoir_memory_bounded_and_uniform():
    counts = torch.zeros(100)
    for seed in range(300):
        r = Reservoir(10, seed=seed)
        for start in range(0, 100, 7):
            r.add(torch.arange(start, min(start + 7, 100)).float()[:, None])
        assert r.data().shape == (10, 1) and r.seen == 100
        counts[r.data()[:, 0].long()] += 1
    # each item is kept with probability 0.1: 30 expected of 300 draws; first and last items alike
    assert counts[:50].mean() == pytest.approx(30, rel=0.15) and counts[50:].mean() == pytest.approx(30, rel=0.15)
    small = Reservoir(10)
    small.add(torch.ones(3, 2))
    assert small.data().shape == (3, 2)


def test_reservoir_sample_keeps_order():
    picked = reservoir_sample(range(1000), 5, random.Random(0))
    assert len(picked) == 5 and picked == sorted(picked)
    assert reservoir_sample(range(3), 5, random.Random(0)) == [0, 1, 2]


def test_probe_task_keys_positives_and_skipped():
    gen = torch.Generator().manual_seed(0)

    def items(cls: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        raw = torch.randn(n, 4, generator=gen) * 0.1
        raw[:, cls] += 3.0
        lat = torch.zeros(n, 8)
        lat[:, 2 * cls] = 1.0 + torch.rand(n, generator=gen)  # latent 2*cls marks the class
        return raw, lat

    raw: dict[str, dict[str, torch.Tensor]] = {"train": {}, "test": {}}
    lat: dict[str, dict[str, torch.Tensor]] = {"train": {}, "test": {}}
    for split, n in (("train", 20), ("test", 6)):
        for cls, name in enumerate(["x", "y", "z"]):
            raw[split][name], lat[split][name] = items(cls, n)
    raw["test"]["w"], lat["test"]["w"] = items(3, 2)  # no train items: skipped
    res = probe_task(raw, lat, ks=[1, 2, 10], seed=0)
    assert res["positives"] == ["x", "y", "z"] and res["skipped"] == ["w"]
    x = res["classes"]["x"]
    assert set(x) == {"llm", "llm_top_1", "llm_top_2", "sae", "sae_top_1", "sae_top_2", "sae_top_10"}
    assert "llm_top_10" not in x  # k above the 4 raw dimensions
    assert x["sae_top_1"].features == [0] and x["sae_top_1"].accuracy == 1.0 and x["sae_top_1"].n == 12
    assert res["mean"]["sae_top_1"]["accuracy"] == 1.0 and res["mean"]["sae_top_1"]["n"] == 36
    pick = lambda d: {s: {k: d[s][k] for k in "xy"} for s in d}  # noqa: E731
    two = probe_task(pick(raw), pick(lat), [1])
    assert two["positives"] == ["x"]
