"""JumpReLU SAE (Rajamanoharan et al. 2024; training recipe of Gemma Scope §3.2).

``z = W_enc^T x + b_enc``, ``f = z * H(z - theta)``, ``x_hat = W_dec^T f + b_dec``,
``L = ||x - x_hat||^2 + lambda * ||f||_0``.

The Heaviside step has no useful gradient, so both ``JumpReLU_theta`` and the ``H`` inside the L0 penalty get
straight-through pseudo-derivatives with a rectangle kernel ``K(u) = 1{|u| < 1/2}`` of bandwidth ``eps``:

* ``d/dtheta JumpReLU_theta(z) := -(theta / eps) * K((z - theta) / eps)``; ``d/dz`` is the true ``H(z - theta)``;
* ``d/dtheta H(z - theta) := -(1 / eps) * K((z - theta) / eps)``; ``d/dz`` is 0.

The threshold is trained directly by default (``jumprelu_threshold_param="direct"``, as current SAELens does, since
Adam barely moves log theta at these learning rates); ``"log"`` trains ``t = log theta`` instead. Either way the
saved tensor is ``threshold`` (theta).

:meth:`JumpReLUSAE.loss` runs the fused (sparse or dense) kernel of :mod:`.sparse_kernel` where it applies; the
autograd Functions below are the reference it is tested against (``sae.kernel = "reference"`` forces them).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from . import sparse_kernel
from .base import SAE, LossOutput, SAEConfig


def rectangle(u: Tensor) -> Tensor:
    """Rectangle kernel ``K(u) = 1{|u| < 1/2}``."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """``z * H(z - theta)`` with the straight-through threshold gradient."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_z = grad_out * (z > theta).to(z.dtype)
        grad_theta = -(theta / eps) * rectangle((z - theta) / eps) * grad_out
        return grad_z, _sum_to(grad_theta, theta.shape), None


class StepFunction(torch.autograd.Function):
    """``H(z - theta)`` with gradient 0 w.r.t. ``z`` and the straight-through gradient w.r.t. ``theta``."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = -(1.0 / eps) * rectangle((z - theta) / eps) * grad_out
        return torch.zeros_like(z), _sum_to(grad_theta, theta.shape), None


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    return t.reshape(-1, *shape).sum(dim=0)


class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    scale_params = ("b_enc", "b_dec")  # theta is folded separately (it may be stored as log theta)
    kernel: str = "auto"
    """Training-loss kernel: auto | sparse | dense | reference (see sparse_kernel; CHATSAE_SAE_KERNEL overrides)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        init = torch.full((cfg.d_sae,), cfg.jumprelu_init_threshold, dtype=getattr(torch, cfg.dtype))
        if cfg.jumprelu_threshold_param == "log":
            self.log_threshold = nn.Parameter(init.log())
        else:
            self.threshold_param = nn.Parameter(init)

    @property
    def threshold(self) -> Tensor:
        """theta ``[d_sae]`` (positive)."""
        if self.cfg.jumprelu_threshold_param == "log":
            return self.log_threshold.exp()
        return self.threshold_param

    def encode_with_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.encoder_input(x) @ self.W_enc + self.b_enc
        return JumpReLUFunction.apply(z, self.threshold, self.cfg.jumprelu_bandwidth), z

    def loss(self, x: Tensor, sparsity_coef: float, dead_mask: Tensor | None = None) -> LossOutput:
        kernel = sparse_kernel.kernel_setting(self.kernel)
        theta = self.threshold
        params = (self.W_enc, self.b_enc, theta, self.W_dec, self.b_dec)
        fused_ok = sparse_kernel.fused_allowed(x, *params, cuda_min_weights=sparse_kernel.CUDA_MIN_WEIGHTS)
        if kernel != "reference" and (kernel != "auto" or fused_ok):
            mse, l0, f, x_hat, counts = sparse_kernel.JumpReLULoss.apply(
                x, *params, self.cfg.jumprelu_bandwidth, bool(self.cfg.apply_b_dec_to_input), kernel
            )
            return LossOutput(mse + sparsity_coef * l0, mse, l0, mse.new_zeros(()), f, x_hat, counts)
        f, z = self.encode_with_pre(x)
        x_hat = self.decode(f)
        mse = self.squared_error(x, x_hat)
        l0 = StepFunction.apply(z, self.threshold, self.cfg.jumprelu_bandwidth).sum(dim=-1).mean()
        zero = mse.new_zeros(())
        return LossOutput(mse + sparsity_coef * l0, mse, l0, zero, f, x_hat)

    @torch.no_grad()
    def clamp_threshold(self) -> None:
        """Keep theta positive after an optimizer step (direct parametrisation only)."""
        if self.cfg.jumprelu_threshold_param == "direct":
            self.threshold_param.clamp_(min=1e-8)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        if self.cfg.jumprelu_threshold_param == "log":
            self.log_threshold.add_(math.log(scale))
        else:
            self.threshold_param.mul_(scale)

    def saelens_state_dict(self) -> dict[str, Tensor]:
        return {
            "W_enc": self.W_enc.detach(),
            "W_dec": self.W_dec.detach(),
            "b_enc": self.b_enc.detach(),
            "b_dec": self.b_dec.detach(),
            "threshold": self.threshold.detach().clone(),
        }

    def load_saelens_state_dict(self, state: dict[str, Tensor]) -> None:
        if "threshold" not in state and "log_threshold" in state:  # older SAELens training checkpoints
            state = {**state, "threshold": state["log_threshold"].exp()}
        self.check_saelens_state(state)
        theta = state["threshold"]
        # theta = 0 is a plain ReLU (SAELens initialises thresholds at 0); log theta needs theta > 0
        log = self.cfg.jumprelu_threshold_param == "log"
        if (theta < 0).any() or (log and (theta == 0).any()):
            raise ValueError(f"jumprelu threshold must be {'positive' if log else 'non-negative'}")
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(self, name).copy_(state[name])
            if self.cfg.jumprelu_threshold_param == "log":
                self.log_threshold.copy_(theta.log())
            else:
                self.threshold_param.copy_(theta)
