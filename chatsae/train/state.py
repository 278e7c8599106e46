"""The training state: everything a run changes as it goes, besides the SAE's weights and the optimiser, in one
object that checkpoints save and restore whole (``state_dict()`` / ``load_state_dict()``).

Shapes: ``since_fired``, ``fire_counts`` ``[d_sae]`` int64; ``dead`` ``[d_sae]`` bool; each ``window`` entry a ``[7]``
float32 tensor of step metrics (:class:`chatsae.train.trainer.StepMetrics` order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class TrainState:
    """Counters, firing history and dead mask of one training run (one rank's view under torchrun)."""

    since_fired: Tensor
    """``[d_sae]`` tokens since each latent last fired."""
    fire_counts: Tensor
    """``[d_sae]`` tokens on which each latent fired, over the run."""
    dead: Tensor
    """``[d_sae]`` AuxK's dead latents, updated once per step (:meth:`dead_mask`)."""
    step: int = 0
    tokens: int = 0
    """Training vectors seen (all ranks)."""
    scale: float = 1.0
    """Input normalisation: raw activations are divided by it (set at initialisation, folded in at the end)."""
    input_limit: float = math.inf
    """Squared norm of a raw activation vector above which it is absurd (dropped); set at initialisation."""
    outliers_dropped: int = 0
    """Absurd vectors dropped by this rank."""
    window: list[Tensor] = field(default_factory=list)
    """Step metrics since the last log line (read by the host once per ``log_every`` steps)."""

    @classmethod
    def fresh(cls, d_sae: int, device: torch.device | str = "cpu") -> TrainState:
        zeros = torch.zeros(d_sae, dtype=torch.long, device=device)
        return cls(since_fired=zeros, fire_counts=zeros.clone(), dead=zeros.bool())

    def record_step(self, counts: Tensor, n: int) -> None:
        """One optimiser step over ``n`` vectors on which latent ``i`` fired ``counts[i]`` times (``[d_sae]``)."""
        self.fire_counts += counts
        self.since_fired += n
        self.since_fired.masked_fill_(counts > 0, 0)
        self.step += 1
        self.tokens += n

    def dead_mask(self, window_tokens: int, cap: bool = False) -> Tensor:
        """``[d_sae]`` bool: not fired in the last ``window_tokens`` tokens (none before a full window has passed), or
        with ``cap`` in ``min(window_tokens, tokens seen)``."""
        if cap:
            if self.tokens == 0:
                return torch.zeros_like(self.since_fired, dtype=torch.bool)
            window_tokens = min(window_tokens, self.tokens)
        return self.since_fired >= window_tokens

    def silent_mask(self, window_tokens: int) -> Tensor:
        """``[d_sae]`` bool: not fired in the last ``min(window_tokens, tokens seen)`` tokens (all False at first)."""
        if self.tokens == 0:
            return torch.zeros_like(self.since_fired, dtype=torch.bool)
        return self.since_fired >= min(window_tokens, self.tokens)

    def state_dict(self) -> dict[str, Any]:
        """Host copies of everything but the window (checkpoints store the window's rows themselves)."""
        return {
            "step": self.step,
            "tokens": self.tokens,
            "scale": self.scale,
            "input_limit": self.input_limit,
            "outliers_dropped": self.outliers_dropped,
            "since_fired": self.since_fired.cpu(),
            "fire_counts": self.fire_counts.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any], rank_state: dict[str, Any] | None = None) -> None:
        """Restore from :meth:`state_dict` (``rank_state``: this rank's own part under torchrun, which holds its
        ``outliers_dropped``); tensors stay on this state's device. The dead mask is recomputed by the caller."""
        device = self.since_fired.device
        self.step, self.tokens, self.scale = int(state["step"]), int(state["tokens"]), float(state["scale"])
        self.input_limit = float(state.get("input_limit", math.inf))  # older checkpoints: NaN/Inf checked only
        self.outliers_dropped = int((rank_state or state).get("outliers_dropped", 0))
        self.since_fired = state["since_fired"].to(device)
        self.fire_counts = state["fire_counts"].to(device)
        self.window = [torch.tensor(m, dtype=torch.float32, device=device) for m in state.get("window", [])]
