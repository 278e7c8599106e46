"""SAE architectures behind one base class, a registry, and the SAELens-compatible on-disk format."""

from __future__ import annotations

import threading

import torch

from .base import K_ARCHITECTURES, SAE, LossOutput, SAEConfig
from .batchtopk import BatchTopKSAE
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .matryoshka import MatryoshkaSAE
from .standard import StandardSAE
from .topk import TopKSAE

ARCHITECTURES: dict[str, type[SAE]] = {
    cls.architecture: cls for cls in (JumpReLUSAE, StandardSAE, TopKSAE, GatedSAE, BatchTopKSAE, MatryoshkaSAE)
}
_SEEDED = threading.Lock()
"""Seeded creation uses the process-wide RNG: one at a time (SAEs built in several threads)."""


def create_sae(cfg: SAEConfig, seed: int | None = None) -> SAE:
    """Build a freshly initialised SAE of ``cfg.architecture``; with ``seed`` its initial weights depend only on the
    seed (drawn from a forked RNG: the global torch RNG is left as it was; thread-safe), else on the global torch
    RNG."""
    if seed is None:
        return ARCHITECTURES[cfg.architecture](cfg)
    with _SEEDED, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES[cfg.architecture](cfg)


from .io import load_sae, save_sae  # noqa: E402

__all__ = [
    "ARCHITECTURES",
    "K_ARCHITECTURES",
    "SAE",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "LossOutput",
    "MatryoshkaSAE",
    "SAEConfig",
    "StandardSAE",
    "TopKSAE",
    "create_sae",
    "load_sae",
    "save_sae",
]
