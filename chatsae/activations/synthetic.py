"""A synthetic sparse-dictionary source with known ground-truth features.

Each vector is ``x = sum_i a_i g_i`` over a random sparse set of true features ``g_i`` (unit vectors ``[d_in]``):
feature i fires independently with probability ``p_i`` (a power law around ``mean_active / n_features``) and, when it
fires, with magnitude ``|N(1, 0.25)|``, plus optional Gaussian noise. A good SAE recovers the ``g_i`` as decoder rows.
Batches depend only on ``(seed, batch index)``, so the stream is exactly resumable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from .source import ActivationBatch


class SyntheticSource:
    """Endless stream of ``[batch_size, d_in]`` vectors built from ``n_features`` ground-truth features."""

    def __init__(
        self,
        d_in: int = 64,
        n_features: int = 256,
        batch_size: int = 1024,
        mean_active: float = 4.0,
        noise: float = 0.0,
        seed: int = 0,
        offset: float = 0.0,
    ) -> None:
        self.d_in, self.n_features, self.batch_size = d_in, n_features, batch_size
        self.noise, self.seed = noise, seed
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(n_features, d_in, generator=g)
        self.features: Tensor = feats / feats.norm(dim=1, keepdim=True)
        """``[n_features, d_in]`` ground-truth unit directions."""
        rank = torch.arange(1, n_features + 1, dtype=torch.float32)
        p = rank.pow(-0.5)
        self.probs: Tensor = (p / p.sum() * mean_active).clamp(max=1.0)
        """``[n_features]`` firing probability of each feature."""
        self.offset: Tensor = torch.randn(d_in, generator=g) * offset
        self.index = 0

    def batch(self, index: int) -> ActivationBatch:
        """The ``index``-th batch (pure function of seed and index)."""
        g = torch.Generator().manual_seed(self.seed * 7_919 + 1 + index)
        fires = torch.rand(self.batch_size, self.n_features, generator=g) < self.probs
        mags = (1.0 + 0.25 * torch.randn(self.batch_size, self.n_features, generator=g)).abs()
        x = (fires * mags) @ self.features + self.offset
        if self.noise:
            x = x + self.noise * torch.randn(self.batch_size, self.d_in, generator=g)
        return ActivationBatch(x)

    def __iter__(self) -> Iterator[ActivationBatch]:
        while True:
            b = self.batch(self.index)
            self.index += 1
            yield b

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])


def feature_recovery(decoder: Tensor, features: Tensor) -> Tensor:
    """For each true feature ``[n, d_in]``, the max cosine similarity with any decoder row ``[d_sae, d_in]``. ``[n]``"""
    dec = decoder / decoder.norm(dim=1, keepdim=True).clamp_min(1e-12)
    feats = features / features.norm(dim=1, keepdim=True)
    return (feats @ dec.T).max(dim=1).values
