"""Matryoshka SAE (Bussmann et al. 2025, "Learning multi-level features with Matryoshka SAEs"; Nabeshima 2024):
nested dictionaries. The latents' prefixes ``[:w_1] ⊂ [:w_2] ⊂ ... ⊂ [:w_L = d_sae]`` (``matryoshka_prefixes``,
default d_sae/16, /8, /4, /2, d_sae) must each reconstruct the input on their own, so the earliest latents learn the
most general features and absorb less.

Loss, as SAELens's ``MatryoshkaBatchTopKTrainingSAE`` (sae-lens 6.54): one BatchTopK activation ``f`` of the full
SAE (k x B entries kept over the batch); level ``j`` reconstructs ``x_hat_j = f[:, :w_j] @ W_dec[:w_j] + b_dec``
(the decoder bias in every level); the loss is the **sum** (not the mean) of ``||x - x_hat_j||^2`` over all levels,
plus the AuxK loss of the full SAE (SAELens's default; its per-level ``use_matryoshka_aux_loss`` is not implemented).
Threshold, inference and saving are :class:`.batchtopk.BatchTopKSAE`'s (SAELens also saves these SAEs as
``jumprelu``); the fused sparse kernel of :mod:`.batchtopk_kernel` handles the levels.
"""

from __future__ import annotations

from .base import SAEConfig
from .batchtopk import BatchTopKSAE


class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"

    def __init__(self, cfg: SAEConfig) -> None:
        cfg.prefix_widths()  # ConfigError now if the prefixes do not end at d_sae
        super().__init__(cfg)

    def levels(self) -> list[int]:
        """The prefix widths ``w_1 < ... < w_L = d_sae`` whose reconstruction losses are summed."""
        return self.cfg.prefix_widths()
