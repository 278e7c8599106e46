"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations (then ReLU), plus the AuxK loss.

AuxK: the residual ``e = x - x_hat`` (detached) is reconstructed from the ``k_aux`` largest pre-activations of the
*dead* latents, ``e_hat = f_aux @ W_dec``; loss ``aux_coef * min(n_dead / k_aux, 1) * ||e - e_hat||^2``
(the scaling by the share of dead latents follows SAELens). It is exactly 0 when no latent is dead.
There is no sparsity coefficient: k sets the sparsity. :meth:`TopKSAE.loss` runs the sparse kernel of
:mod:`.sparse_kernel` (top-k in the encoder, embedding-bag decoder, sparse gradients) where it applies and the latents
are sparse; ``sae.kernel = "reference"`` forces the plain autograd code below.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import sparse_kernel
from .base import SAE, LossOutput


def topk_relu(z: Tensor, k: int) -> Tensor:
    """Zero all but the k largest entries of the last dim, then ReLU. ``[..., d_sae]``"""
    values, indices = z.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(z).scatter(-1, indices, torch.relu(values))


class TopKSAE(SAE):
    architecture = "topk"
    kernel: str = "auto"
    """Training-loss kernel: auto | sparse | reference ("dense" = reference); CHATSAE_SAE_KERNEL overrides."""

    def encode_with_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder_input(x) @ self.W_enc + self.b_enc
        return topk_relu(z, self.cfg.k), z

    def loss(self, x: Tensor, sparsity_coef: float = 0.0, dead_mask: Tensor | None = None) -> LossOutput:
        n_dead = 0 if dead_mask is None else int(dead_mask.sum())
        k_aux = self.cfg.aux_k or self.cfg.d_in // 2
        k_dead = min(k_aux, n_dead)
        kernel = sparse_kernel.kernel_setting(self.kernel)
        params = (self.W_enc, self.b_enc, self.W_dec, self.b_dec)
        density = (self.cfg.k + k_dead) / self.cfg.d_sae
        cuda_min = None if k_dead else sparse_kernel.CUDA_MIN_WEIGHTS  # CUDA: measured without AuxK only
        if kernel == "sparse" or (
            kernel == "auto"
            and sparse_kernel.fused_allowed(x, *params, cuda_min_weights=cuda_min)
            and sparse_kernel.choose(kernel, density, sparse_kernel.TOPK_SPARSE_MAX_DENSITY) == "sparse"
        ):
            dead_idx = x.new_zeros(0, dtype=torch.long)
            if k_dead and dead_mask is not None:
                dead_idx = dead_mask.nonzero().squeeze(1)
            scale = self.cfg.aux_coef * min(n_dead / k_aux, 1.0)
            mse, aux, f, x_hat, l0, counts = sparse_kernel.TopKLoss.apply(
                x, *params, self.cfg.k, dead_idx, k_dead, scale, bool(self.cfg.apply_b_dec_to_input)
            )
            return LossOutput(mse + aux, mse, l0, aux, f, x_hat, counts)
        f, z = self.encode_with_pre(x)
        x_hat = self.decode(f)
        mse = self.squared_error(x, x_hat)
        aux = self.auxk_loss(x - x_hat.detach(), z, dead_mask)
        l0 = (f > 0).sum(dim=-1).to(x.dtype).mean()
        return LossOutput(mse + aux, mse, l0, aux, f, x_hat)

    def auxk_loss(self, residual: Tensor, z: Tensor, dead_mask: Tensor | None) -> Tensor:
        """``[batch, d_in]`` residual, ``[batch, d_sae]`` pre-activations, ``[d_sae]`` bool dead mask -> scalar."""
        n_dead = 0 if dead_mask is None else int(dead_mask.sum())
        if n_dead == 0:
            return z.new_zeros(())
        assert dead_mask is not None
        k_aux = self.cfg.aux_k or self.cfg.d_in // 2
        scale = min(n_dead / k_aux, 1.0)
        k = min(k_aux, n_dead)
        z_dead = torch.where(dead_mask, z, torch.full_like(z, -torch.inf))
        f_aux = topk_relu(z_dead, k)
        e_hat = f_aux @ self.W_dec
        return self.cfg.aux_coef * scale * (e_hat - residual).pow(2).sum(dim=-1).mean()
