"""Learning-rate and sparsity-coefficient schedules."""

from __future__ import annotations

import math

import pytest

from chatsae.train.schedule import lr_at, sparsity_coef_at, steps_from

LR, LR_END, TOTAL, WARM = 3e-3, 3.7e-4, 101, 10


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_warmup_then_decay_ends_exactly_at_lr_end(decay: str) -> None:
    lrs = [lr_at(s, TOTAL, LR, LR_END, WARM, 0.1, decay) for s in range(TOTAL)]
    # linear warm-up from 0.1 * lr to lr
    for s in range(WARM):
        assert lrs[s] == pytest.approx(LR * (0.1 + 0.9 * s / WARM), rel=1e-12)
    assert lrs[WARM] == pytest.approx(LR, rel=1e-12)
    # the last optimizer step (index TOTAL - 1) runs at exactly lr_end, and nothing goes below it
    assert lrs[-1] == LR_END
    # monotone decay after the warm-up, never below lr_end
    after = lrs[WARM:]
    assert min(after) == LR_END
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    # shape of the decay at its midpoint
    mid = WARM + (TOTAL - WARM - 1) // 2
    t = (mid - WARM) / (TOTAL - WARM - 1)
    want = LR_END + 0.5 * (LR - LR_END) * (1 + math.cos(math.pi * t)) if decay == "cosine" else LR + (LR_END - LR) * t
    assert lrs[mid] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
@pytest.mark.parametrize(
    ("lr", "lr_end", "total", "warm"), [(1e-3, 1e-4, 7, 0), (7e-5, 7e-6, 1000, 160), (0.1, 0.0, 3, 1)]
)
def test_last_step_is_lr_end_for_many_settings(decay: str, lr: float, lr_end: float, total: int, warm: int) -> None:
    assert lr_at(total - 1, total, lr, lr_end, warm, 0.1, decay) == lr_end
    assert lr_at(warm, total, lr, lr_end, warm, 0.1, decay) == pytest.approx(lr, rel=1e-12)


def test_constant_and_unknown_decay() -> None:
    assert all(lr_at(s, TOTAL, LR, LR_END, WARM, 0.1, "constant") == LR for s in range(WARM, TOTAL))
    with pytest.raises(ValueError, match="decay"):
        lr_at(WARM + 1, TOTAL, LR, LR_END, WARM, 0.1, "exp")


def test_sparsity_warmup_is_linear() -> None:
    coef, warm = 0.02, 40
    vals = [sparsity_coef_at(s, coef, warm) for s in range(60)]
    assert vals[0] == 0.0
    for s in range(warm):
        assert vals[s] == pytest.approx(coef * s / warm, rel=1e-12)
    assert all(v == coef for v in vals[warm:])
    diffs = [b - a for a, b in zip(vals[:warm], vals[1 : warm + 1], strict=True)]
    assert max(diffs) - min(diffs) < 1e-15
    assert sparsity_coef_at(0, coef, 0) == coef


def test_steps_from() -> None:
    assert steps_from(0.05, 1000) == 50
    assert steps_from(0.2, 7) == 1
    assert steps_from(0, 1000) == 0
    assert steps_from(16000, 10) == 16000
    assert steps_from(1, 10) == 1
