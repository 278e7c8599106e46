"""BatchTopK SAE (Bussmann, Leask & Nanda 2024): in training, keep the ``k * B`` largest ReLU'd pre-activations of the
whole batch of ``B`` tokens (k per token on average); at inference, a JumpReLU with one scalar threshold.

Threshold: after each training step ``theta <- (1 - r) * theta + r * m``, ``m`` the smallest positive kept
activation of the batch, ``r = max(lr, 1 / n)`` at the n-th update (``lr`` = ``batchtopk_threshold_lr``, default
0.01; float64). From ``n = 1 / lr`` on this is SAELens's ``BatchTopKTrainingSAE.update_topk_threshold``; before, theta
is the plain mean of the batches seen (SAELens starts its average at 0, which leaves theta biased low for the first
few hundred steps; dictionary_learning starts at the first batch's value, which then weighs on it for as long).
Buffers ``topk_threshold`` (theta, 0 = a plain ReLU) and ``threshold_updates`` (n; 0 after loading a saved SAE, so a
fine-tuning run starts a new estimate). Under torchrun each step's ``m`` is the minimum over the ranks, so every rank
holds the same theta.

Inference: ``f = ReLU(z) * (z > theta)``; it is saved as a SAELens ``jumprelu`` SAE (``threshold`` = theta for every
latent, as SAELens saves its BatchTopK SAEs), with chatsae's own config kept under ``chatsae`` in cfg.json so that
:func:`chatsae.sae.load_sae` reads it back as BatchTopK. AuxK as :class:`.topk.TopKSAE`. :meth:`BatchTopKSAE.loss`
runs the fused sparse kernel of :mod:`.batchtopk_kernel` on the CPU when the latents are sparse;
``sae.kernel = "reference"`` forces the plain autograd code.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from . import sparse_kernel
from .base import LossOutput, SAEConfig
from .batchtopk_kernel import BatchTopKLoss
from .topk import TopKSAE


def batch_topk_relu(z: Tensor, k: int) -> Tensor:
    """Keep the ``k * B`` largest entries of ``ReLU(z)`` over the whole ``[B, d_sae]`` batch, zero the rest."""
    acts = z.relu()
    flat = acts.reshape(-1)
    top = flat.topk(min(k * z.shape[0], flat.numel()), sorted=False)
    return torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(z)


class BatchTopKSAE(TopKSAE):
    architecture = "batchtopk"
    saelens_architecture = "jumprelu"
    topk_threshold: Tensor
    threshold_updates: Tensor

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("topk_threshold", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("threshold_updates", torch.tensor(0, dtype=torch.long))

    @property
    def threshold(self) -> Tensor:
        """The inference threshold theta (a 0-dim tensor in the parameter dtype, >= 0)."""
        return self.topk_threshold.to(self.W_enc.dtype)

    def encode_with_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder_input(x) @ self.W_enc + self.b_enc
        return z.relu() * (z > self.threshold.to(z.dtype)), z

    def levels(self) -> list[int]:
        """Widths whose reconstruction losses are summed (Matryoshka prefixes; here only d_sae)."""
        return [self.cfg.d_sae]

    def loss(self, x: Tensor, sparsity_coef: float = 0.0, dead_mask: Tensor | None = None) -> LossOutput:
        """Training loss with the batch top-k activation; updates the threshold (in training mode)."""
        n_dead = 0 if dead_mask is None else int(dead_mask.sum())
        k_aux = self.cfg.aux_k or self.cfg.d_in // 2
        k_dead = min(k_aux, n_dead)
        widths = self.levels()
        kernel = sparse_kernel.kernel_setting(self.kernel)
        params = (self.W_enc, self.b_enc, self.W_dec, self.b_dec)
        density = (self.cfg.k * len(widths) + k_dead) / self.cfg.d_sae
        if kernel == "sparse" or (
            kernel == "auto"
            and sparse_kernel.fused_allowed(x, *params)  # CPU only: the selection syncs with the host
            and sparse_kernel.choose(kernel, density, sparse_kernel.TOPK_SPARSE_MAX_DENSITY) == "sparse"
        ):
            dead_idx = x.new_zeros(0, dtype=torch.long)
            if k_dead and dead_mask is not None:
                dead_idx = dead_mask.nonzero().squeeze(1)
            scale = self.cfg.aux_coef * min(n_dead / k_aux, 1.0)
            mse, inner, aux, f, x_hat, l0, counts, min_kept = BatchTopKLoss.apply(
                x, *params, self.cfg.k, widths, dead_idx, k_dead, scale, bool(self.cfg.apply_b_dec_to_input)
            )
            self.update_threshold(min_kept)
            return LossOutput(mse + inner + aux, mse, l0, aux, f, x_hat, counts)
        z = self.encoder_input(x) @ self.W_enc + self.b_enc
        f = batch_topk_relu(z, self.cfg.k)
        x_hat = self.decode(f)
        mse = self.squared_error(x, x_hat)
        inner = sum(
            (self.squared_error(x, f[:, :w] @ self.W_dec[:w] + self.b_dec) for w in widths[:-1]), mse.new_zeros(())
        )
        aux = self.auxk_loss(x - x_hat.detach(), z, dead_mask)
        self.update_threshold(torch.where(f > 0, f, torch.inf).min())
        l0 = (f > 0).sum(dim=-1).to(x.dtype).mean()
        return LossOutput(mse + inner + aux, mse, l0, aux, f, x_hat)

    @torch.no_grad()
    def update_threshold(self, min_kept: Tensor) -> None:
        """Fold a batch's smallest kept activation (inf: none) into the threshold's moving average (training mode)."""
        if not self.training:
            return
        m = min_kept.detach().to(torch.float64).reshape(())
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(m, op=dist.ReduceOp.MIN)
        t = self.topk_threshold
        rate = (1.0 / (self.threshold_updates + 1).to(torch.float64)).clamp_min(self.cfg.batchtopk_threshold_lr)
        seen = torch.isfinite(m)
        self.topk_threshold.copy_(torch.where(seen, t + rate * (m - t), t))
        self.threshold_updates.add_(seen.to(torch.long))

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.topk_threshold.mul_(scale)

    def saelens_state_dict(self) -> dict[str, Tensor]:
        state = {name: getattr(self, name).detach() for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
        state["threshold"] = self.threshold.expand(self.cfg.d_sae).clone()
        return state

    def load_saelens_state_dict(self, state: dict[str, Tensor]) -> None:
        self.check_saelens_state(state)
        theta = state["threshold"]
        if bool((theta != theta[0]).any()) or float(theta[0]) < 0:
            raise ValueError(f"a {self.architecture} SAE needs one non-negative threshold for every latent")
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(self, name).copy_(state[name])
            self.topk_threshold.fill_(float(theta[0]))
            self.threshold_updates.zero_()
