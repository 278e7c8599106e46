"""Gated SAE (Rajamanoharan et al. 2024a).

Gate ``pi = W_enc^T (x - b_dec) + b_gate``; magnitude ``m = (W_enc * exp(r_mag))^T (x - b_dec) + b_mag``;
``f = 1[pi > 0] * ReLU(m)``. Loss: ``||x - x_hat||^2 + lambda * sum_i ReLU(pi_i) * ||W_dec,i||`` plus the auxiliary
``||x - (ReLU(pi) @ W_dec.detach() + b_dec.detach())||^2`` through a frozen copy of the decoder, which gives the gate
its gradient. ``W_enc`` is the gate matrix (SAELens names: W_enc, b_gate, r_mag, b_mag, W_dec, b_dec).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SAE, LossOutput, SAEConfig


class GatedSAE(SAE):
    architecture = "gated"
    has_b_enc = False
    scale_params = ("b_gate", "b_mag", "b_dec")

    def __init__(self, cfg: SAEConfig) -> None:
        dtype = getattr(torch, cfg.dtype)
        super().__init__(cfg)
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))

    def gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(pi, m)``, both ``[..., d_sae]``."""
        h = self.encoder_input(x) @ self.W_enc
        return h + self.b_gate, h * self.r_mag.exp() + self.b_mag

    def encode_with_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pi, m = self.gate_and_magnitude(x)
        return (pi > 0).to(m.dtype) * torch.relu(m), pi

    def loss(self, x: Tensor, sparsity_coef: float, dead_mask: Tensor | None = None) -> LossOutput:
        pi, m = self.gate_and_magnitude(x)
        f = (pi > 0).to(m.dtype) * torch.relu(m)
        x_hat = self.decode(f)
        mse = self.squared_error(x, x_hat)
        gate = torch.relu(pi)
        sparsity = (gate * self.decoder_norms()).sum(dim=-1).mean()
        aux = self.squared_error(x, gate @ self.W_dec.detach() + self.b_dec.detach())
        return LossOutput(mse + sparsity_coef * sparsity + aux, mse, sparsity, aux, f, x_hat)
