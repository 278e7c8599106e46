"""Standard SAE: ReLU encoder; loss ``||x - x_hat||^2 + lambda * sum_i f_i * ||W_dec,i||`` (weighted L1)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SAE, LossOutput


class StandardSAE(SAE):
    architecture = "standard"

    def encode_with_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder_input(x) @ self.W_enc + self.b_enc
        return torch.relu(z), z

    def loss(self, x: Tensor, sparsity_coef: float, dead_mask: Tensor | None = None) -> LossOutput:
        f, _ = self.encode_with_pre(x)
        x_hat = self.decode(f)
        mse = self.squared_error(x, x_hat)
        l1 = (f * self.decoder_norms()).sum(dim=-1).mean()
        return LossOutput(mse + sparsity_coef * l1, mse, l1, mse.new_zeros(()), f, x_hat)
