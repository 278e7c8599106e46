"""Data-dependent initialisation: the input scale and the geometric median (Weiszfeld) against a naive minimiser."""

from __future__ import annotations

import math

import pytest
import torch

from chatsae.train.init import geometric_median, input_scale

pytestmark = pytest.mark.usefixtures("single_thread")


def sum_of_distances(x: torch.Tensor, y: torch.Tensor) -> float:
    return (x.double() - y.double()).norm(dim=1).sum().item()


def naive_geometric_median(x: torch.Tensor, steps: int = 3000) -> torch.Tensor:
    """Minimise sum_i ||x_i - y|| by normalised (sub)gradient descent with a decaying step, from the coordinate-wise
    median; keeps the best point seen. Independent of Weiszfeld: it only uses the objective and its gradient
    sum_i (y - x_i) / ||y - x_i||."""
    x = x.double()
    y = x.median(dim=0).values.clone()
    scale = (x - y).norm(dim=1).mean().item()
    best, best_y = math.inf, y.clone()
    for t in range(steps):
        diff = y - x
        dist = diff.norm(dim=1)
        obj = dist.sum().item()
        if obj < best:
            best, best_y = obj, y.clone()
        g = (diff / dist.clamp_min(1e-12)[:, None]).sum(0)
        y = y - scale * 0.5 / (1 + t) ** 0.75 * g / max(g.norm().item(), 1e-12)
    return best_y


@pytest.mark.parametrize(("n", "d", "seed"), [(7, 2, 0), (25, 3, 1), (60, 5, 2)])
def test_geometric_median_matches_naive_minimiser(n: int, d: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.linspace(0.5, 3.0, d) + 2.0
    gm = geometric_median(x)
    ref = naive_geometric_median(x)
    assert gm.shape == (d,) and gm.dtype == torch.float32
    # Weiszfeld's objective is no worse than the reference minimiser's, and the points agree
    assert sum_of_distances(x, gm) <= sum_of_distances(x, ref) * (1 + 1e-6)
    torch.testing.assert_close(gm.double(), ref, atol=2e-3, rtol=0)
    # ... and strictly better than the mean (the mean is not the minimiser for these samples)
    assert sum_of_distances(x, gm) < sum_of_distances(x, x.mean(0)) - 1e-6


def test_geometric_median_collinear_odd_is_the_middle_point() -> None:
    """On a line the geometric median of an odd number of points is their median (a data point: eps guard)."""
    t = torch.tensor([-3.0, -1.0, 0.5, 2.0, 10.0])
    direction = torch.tensor([0.6, 0.8])
    x = t[:, None] * direction
    torch.testing.assert_close(geometric_median(x, max_iter=1000, tol=1e-12), 0.5 * direction, atol=1e-3, rtol=0)


def test_geometric_median_is_robust_to_outliers() -> None:
    g = torch.Generator().manual_seed(0)
    centre = torch.tensor([1.0, -2.0, 0.5, 3.0])
    inliers = centre + 0.1 * torch.randn(180, 4, generator=g)
    outliers = centre + 1000.0 + torch.randn(20, 4, generator=g)
    x = torch.cat([inliers, outliers])
    gm = geometric_median(x)
    assert (gm - centre).norm() < 0.1
    assert (x.mean(0) - centre).norm() > 100


def test_input_scale() -> None:
    x = torch.randn(500, 8) * 13.0
    c = input_scale(x)
    assert c == pytest.approx(math.sqrt(sum(float(r @ r) for r in x) / len(x)), rel=1e-6)
    assert (x / c).pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="normalise"):
        input_scale(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="normalise"):
        input_scale(torch.tensor([[float("inf"), 0.0]]))
