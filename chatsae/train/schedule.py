"""Learning-rate and sparsity-coefficient schedules as pure functions of the step (nothing to checkpoint)."""

from __future__ import annotations

import math


def steps_from(value: float, total_steps: int) -> int:
    """A step count given either as an int (``>= 1``) or as a fraction of the run (``0 <= value < 1``)."""
    return int(round(value * total_steps)) if value < 1 else int(value)


def lr_at(
    step: int,
    total_steps: int,
    lr: float,
    lr_end: float,
    warmup_steps: int,
    warmup_start_factor: float = 0.1,
    decay: str = "cosine",
) -> float:
    """Linear warm-up from ``warmup_start_factor * lr`` to ``lr``, then ``decay`` (cosine|linear|constant) to
    ``lr_end`` at the last step."""
    if step < warmup_steps:
        frac = step / max(warmup_steps, 1)
        return lr * (warmup_start_factor + (1.0 - warmup_start_factor) * frac)
    if decay == "constant":
        return lr
    span = max(total_steps - warmup_steps - 1, 1)
    t = min((step - warmup_steps) / span, 1.0)
    if decay == "cosine":
        return lr_end + 0.5 * (lr - lr_end) * (1.0 + math.cos(math.pi * t))
    if decay == "linear":
        return lr_end * t + lr * (1.0 - t)  # exactly lr_end at t = 1
    raise ValueError(f"unknown lr decay {decay!r}; use cosine, linear or constant")


def sparsity_coef_at(step: int, coef: float, warmup_steps: int) -> float:
    """Linear warm-up of the sparsity coefficient from 0 to ``coef`` over ``warmup_steps``."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return coef
    return coef * step / warmup_steps
