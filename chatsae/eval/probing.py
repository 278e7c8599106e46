"""Sparse probing as SAEBench defines it (``sae_bench/evals/sparse_probing``), as pure tensor functions.

For each class of a task, a binary one-vs-rest probe: the positives are the class's items, the negatives an equal
number drawn evenly from the other classes (SAEBench's ``prepare_probe_data``). The ``k`` latents are the ones whose
mean activation differs most between positives and negatives on the train split (``|mean_pos - mean_neg|``,
SAEBench's ``get_top_k_mean_diff_mask``); a logistic-regression probe is fitted on only those and scored on the test
split. The baseline is the same probe on all raw activations (``llm``), and on the top-``k`` raw dimensions.

Logistic regression minimises sklearn's objective ``C * sum_i s_i * logloss_i + ||w||^2 / 2`` (bias unpenalised,
``s_i`` = 1, or ``n / (2 n_class)`` when ``balanced``) with full-batch L-BFGS in float64: what
``sklearn.linear_model.LogisticRegression(C=1.0)`` fits, which SAEBench calls. Intervals: Wilson score (95%) for one
probe's accuracy; a percentile bootstrap over test items for a mean over several probes.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
Z95 = 1.959963984540054
SMALL = 4_000_000
"""Probe fits on fewer than this many input values run single-threaded."""


@dataclass
class LogisticProbe:
    """A fitted binary probe: ``logits(x[N, D]) = x @ weight + bias`` (``weight [D]``, float64)."""

    weight: Tensor
    bias: float

    def logits(self, x: Tensor) -> Tensor:
        return x.double() @ self.weight + self.bias


def fit_logistic(
    x: Tensor, y: Tensor, c: float = 1.0, balanced: bool = False, max_iter: int = 500, tol: float = 1e-9
) -> LogisticProbe:
    """L2-regularised logistic regression on ``x [N, D]``, labels ``y [N]`` in {0, 1} (sklearn's objective, above).

    The objective is divided by ``N`` for the line search's sake (same minimiser)."""
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"fit_logistic needs x [N, D] and y [N]; got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("fit_logistic needs at least one example")
    xd, yd = x.detach().double(), y.detach().double()
    n = xd.shape[0]
    weights = torch.ones(n, dtype=torch.float64)
    if balanced:
        n_pos = float(yd.sum())
        for value, count in ((1.0, n_pos), (0.0, n - n_pos)):
            if count > 0:
                weights[yd == value] = n / (2.0 * count)
    w = torch.zeros(xd.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        z = xd @ w + b
        logloss = torch.nn.functional.softplus(z) - yd * z  # = BCE with logits
        loss = (c * (weights * logloss).sum() + 0.5 * (w * w).sum()) / n
        loss.backward()
        return loss

    with torch.enable_grad(), _threads(1 if xd.numel() < SMALL else torch.get_num_threads()):
        opt.step(closure)
    return LogisticProbe(w.detach().clone(), float(b.detach()))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads, then restore the count: the many small kernels of one probe fit are ~10x
    slower multi-threaded on a busy CPU (OpenMP start-up and spin-waits dominate vectors of a few hundred)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def top_k_mean_diff(x: Tensor, y: Tensor, k: int) -> Tensor:
    """Indices ``[min(k, D)]`` of the columns of ``x [N, D]`` with the largest ``|mean(x[y==1]) - mean(x[y==0])|``,
    largest first (ties: lower index first)."""
    diff = (x[y == 1].double().mean(0) - x[y == 0].double().mean(0)).abs()
    return torch.argsort(diff, descending=True, stable=True)[: min(k, x.shape[1])]


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(0, 1)`` when ``n == 0``)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean_accuracy(
    corrects: Sequence[Tensor], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean over probes of their accuracies; each probe's test items (``corrects[i]``,
    bool ``[n_i]``) are resampled independently."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.zeros(n_boot, dtype=torch.float64)
    used = [c.double() for c in corrects if c.numel()]
    if not used:
        return 0.0, 1.0
    for c in used:
        idx = torch.randint(0, c.numel(), (n_boot, c.numel()), generator=gen)
        means += c[idx].mean(1)
    means /= len(used)
    alpha = (1 - level) / 2
    return float(torch.quantile(means, alpha)), float(torch.quantile(means, 1 - alpha))


@dataclass
class ProbeScore:
    """Test accuracy of one probe with its Wilson interval; ``features``: the columns it used (None = all)."""

    accuracy: float
    correct: int
    n: int
    low: float
    high: float
    features: list[int] | None = None

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"accuracy": self.accuracy, "correct": self.correct, "n": self.n}
        d.update(interval=[self.low, self.high], features=self.features)
        return d


def score_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, c: float = 1.0, balanced: bool = False
) -> tuple[ProbeScore, Tensor]:
    """Fit on train, score on test: ``(score, correct [N_test] bool)`` (prediction: logit > 0)."""
    probe = fit_logistic(train_x, train_y, c=c, balanced=balanced)
    correct = (probe.logits(test_x) > 0) == test_y.bool()
    n_ok = int(correct.sum())
    low, high = wilson_interval(n_ok, correct.numel())
    return ProbeScore(n_ok / max(correct.numel(), 1), n_ok, correct.numel(), low, high), correct


def sparse_probe(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, ks: Iterable[int], c: float = 1.0
) -> dict[int, tuple[ProbeScore, Tensor]]:
    """For each ``k``: the top-``k`` mean-difference columns of ``train_x [N, D]``, a probe on them, its test score
    (``features`` lists the columns, largest difference first) and per-item correctness."""
    ks = sorted(set(ks))
    order = top_k_mean_diff(train_x, train_y, max(ks))
    out: dict[int, tuple[ProbeScore, Tensor]] = {}
    for k in ks:
        cols = order[:k]
        score, correct = score_probe(train_x[:, cols], train_y, test_x[:, cols], test_y, c=c)
        score.features = cols.tolist()
        out[k] = (score, correct)
    return out


def one_vs_rest(by_class: dict[str, Tensor], positive: str, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """SAEBench's ``prepare_probe_data``: all rows of ``positive``, and as many negatives drawn evenly (at random)
    from the other classes; returns shuffled ``(x [2P, ...], y [2P] int64)``. Row ``i`` of every tensor in
    ``by_class`` is one item, so call it with the same generator state to pick the same items from raw and SAE
    tensors."""
    pos = by_class[positive]
    others = [name for name in by_class if name != positive]
    if not others:
        raise ValueError(f"one-vs-rest for {positive!r} needs at least one other class")
    per = math.ceil(len(pos) / len(others))
    neg = torch.cat([by_class[o][torch.randperm(len(by_class[o]), generator=gen)[:per]] for o in others])
    neg = neg[torch.randperm(len(neg), generator=gen)[: len(pos)]]
    x = torch.cat([pos, neg])
    y = torch.cat([torch.ones(len(pos), dtype=torch.long), torch.zeros(len(neg), dtype=torch.long)])
    perm = torch.randperm(len(x), generator=gen)
    return x[perm], y[perm]


def mean_pool(values: Tensor, groups: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Per-group sums ``[n_groups, F]`` and counts ``[n_groups]`` of ``values [n, F]`` (``groups [n]`` in
    ``0..n_groups-1``): accumulate them over batches and divide at the end for a mean pool."""
    sums = torch.zeros(n_groups, values.shape[1], dtype=torch.float64)
    sums.index_add_(0, groups, values.double())
    counts = torch.bincount(groups, minlength=n_groups)
    return sums, counts


class Reservoir:
    """A uniform sample of at most ``capacity`` rows of a stream of ``[n, D]`` batches (Algorithm R): memory stays
    ``capacity x D`` whatever the stream's length."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"reservoir capacity must be >= 1, got {capacity}")
        self.capacity, self.seen = capacity, 0
        self.rng = random.Random(seed)
        self.rows: Tensor | None = None

    def add(self, batch: Tensor) -> None:
        if self.rows is None:
            self.rows = batch.new_zeros((self.capacity, *batch.shape[1:]))
        take = min(len(batch), max(self.capacity - self.seen, 0))
        self.rows[self.seen : self.seen + take] = batch[:take]
        self.seen += take
        for row in batch[take:]:
            self.seen += 1
            j = self.rng.randrange(self.seen)
            if j < self.capacity:
                self.rows[j] = row

    def data(self) -> Tensor:
        """The sampled rows ``[min(seen, capacity), D]`` (empty before the first batch)."""
        if self.rows is None:
            return torch.zeros(0)
        return self.rows[: min(self.seen, self.capacity)]


def reservoir_sample(items: Iterable[T], capacity: int, rng: random.Random) -> list[T]:
    """A uniform sample of at most ``capacity`` items of a stream, in stream order (Algorithm R)."""
    kept: list[tuple[int, T]] = []
    for i, item in enumerate(items):
        if i < capacity:
            kept.append((i, item))
        else:
            j = rng.randrange(i + 1)
            if j < capacity:
                kept[j] = (i, item)
    return [item for _, item in sorted(kept, key=lambda p: p[0])]


def probe_task(
    raw: dict[str, dict[str, Tensor]],
    latents: dict[str, dict[str, Tensor]],
    ks: Sequence[int],
    c: float = 1.0,
    seed: int = 42,
    dense_sae: bool = True,
) -> dict[str, Any]:
    """SAEBench's sparse probing of one task: ``raw[split][class] [n, d]``, ``latents[split][class] [n, F]``.

    One probe per class (one-vs-rest; with exactly two classes only the first class, the other being its rest).
    Per class: ``llm`` (dense probe on raw activations), ``llm_top_k``, ``sae_top_k`` and (``dense_sae``) ``sae``
    (all latents), each a :class:`ProbeScore`. ``mean``: their mean over classes with a bootstrap interval.
    Classes with fewer than 2 train or 1 test items are skipped (listed in ``skipped``)."""
    train_raw, test_raw = raw["train"], raw["test"]
    usable = [k for k in train_raw if len(train_raw[k]) >= 2 and len(test_raw.get(k, ())) >= 1]
    skipped = sorted((set(train_raw) | set(test_raw)) - set(usable))
    positives = usable[:1] if len(usable) == 2 else usable
    per_class: dict[str, dict[str, ProbeScore]] = {}
    corrects: dict[str, list[Tensor]] = {}
    gen = torch.Generator().manual_seed(seed)
    d = next(iter(train_raw.values())).shape[1] if train_raw else 0
    joined = {s: {k: torch.cat([raw[s][k], latents[s][k]], 1) for k in usable} for s in ("train", "test")}
    for cls in positives if len(usable) >= 2 else []:
        xtr, ytr = one_vs_rest(joined["train"], cls, gen)
        xte, yte = one_vs_rest(joined["test"], cls, gen)
        scores: dict[str, ProbeScore] = {}
        results = {"llm": {0: score_probe(xtr[:, :d], ytr, xte[:, :d], yte, c=c)}}
        results["llm_top"] = sparse_probe(xtr[:, :d], ytr, xte[:, :d], yte, [k for k in ks if k <= d], c=c)
        results["sae_top"] = sparse_probe(xtr[:, d:], ytr, xte[:, d:], yte, ks, c=c)
        if dense_sae:
            results["sae"] = {0: score_probe(xtr[:, d:], ytr, xte[:, d:], yte, c=c)}
        for kind, by_k in results.items():
            for k, (score, correct) in by_k.items():
                key = f"{kind}_{k}" if kind.endswith("_top") else kind
                scores[key] = score
                corrects.setdefault(key, []).append(correct)
        per_class[cls] = scores
    mean: dict[str, dict[str, Any]] = {}
    for key, parts in corrects.items():
        accs = [per_class[cls][key].accuracy for cls in per_class]
        low, high = bootstrap_mean_accuracy(parts, seed=seed)
        mean[key] = {"accuracy": sum(accs) / len(accs), "interval": [low, high], "n": sum(len(p) for p in parts)}
    return {"classes": per_class, "mean": mean, "skipped": skipped, "positives": list(per_class)}
