"""Training hyperparameters.

Paper values (FAST App. C; Gemma Scope §3.2) are given per field. The defaults are scaled for runs of a few hundred
thousand tokens on a CPU (the ``make run`` job): more, smaller steps at a higher learning rate, warm-ups as fractions of
the run. ``configs/fast_paper.yaml`` and ``configs/gemmascope_jumprelu.yaml`` hold the papers' exact settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.config import RESUME_MAY_CHANGE, ConfigError, check, run_config_section, validate
from ..core.devices import resolve_device
from . import tracking

# sparsity coefficient per architecture, for inputs normalised to E||x||^2 = 1
DEFAULT_SPARSITY_COEF = {
    "jumprelu": 0.002,
    "standard": 0.1,
    "gated": 0.14,
    "topk": 0.0,
    "batchtopk": 0.0,
    "matryoshka": 0.0,
}
DEFAULT_BETA1 = {"jumprelu": 0.0, "standard": 0.9, "gated": 0.9, "topk": 0.9, "batchtopk": 0.9, "matryoshka": 0.9}
"""Adam beta1 per architecture when --beta1 is not given: 0 for JumpReLU (Gemma Scope; measured on the embedded model,
docs/results/sweep: delta LM loss 0.559 -> 0.450 at lambda 0.002, 300k tokens), 0.9 for the others (FAST paper)."""


@run_config_section("train")
@dataclass
class TrainConfig:
    """How the SAE is optimised."""

    total_tokens: int = 600_000
    """Training budget in tokens (activation vectors). FAST paper: 40.96M."""
    batch_size: int = 1024
    """Tokens per optimizer step. Gemma Scope: 4096."""
    lr: float = 3e-3
    """Peak learning rate. FAST / Gemma Scope: 7e-5 (at 4096-token batches over 10k+ steps). 3e-3 measured best of
    {1e-3, 3e-3} for 200k-token JumpReLU runs on the embedded model (FVU 0.26 vs 0.30)."""
    lr_end: float | None = None
    """Final learning rate after decay; None = lr / 10 (FAST: 7e-5 -> 7e-6)."""
    lr_decay: str = "cosine"
    """Decay after warm-up: cosine | linear | constant. FAST: cosine annealing."""
    lr_warmup_steps: float = 0.05
    """Warm-up steps (int >= 1) or fraction of the run (< 1). FAST: 16,000; Gemma Scope: 1,000."""
    lr_warmup_start_factor: float = 0.1
    """Warm-up starts at this fraction of lr (Gemma Scope: 0.1)."""
    beta1: float | None = None
    """Adam beta1. None = architecture default: 0 for jumprelu (Gemma Scope), 0.9 for the others (FAST)."""
    beta2: float = 0.999
    """Adam beta2 (both papers: 0.999)."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    sparsity_coef: float | None = None
    """lambda: L0 coefficient (jumprelu) or decoder-weighted L1 coefficient (standard, gated); unused by topk.
    None = architecture default for E||x||^2 = 1 inputs (jumprelu 0.002, standard 0.1, gated 0.14). FAST (SAELens,
    ||x|| ~ sqrt(d_in)): L1 5, L0 0.01."""
    sparsity_warmup_steps: float = 0.2
    """Linear warm-up of lambda from 0: steps (int) or fraction of the run. FAST / Gemma Scope: 10,000 steps."""
    grad_clip_norm: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    normalize_activations: bool = True
    """Scale inputs by a constant so that E||x||^2 = 1 (Gemma Scope); the scale is folded back into the saved SAE."""
    init_sample_tokens: int = 16_384
    """Tokens drawn at the start to estimate the input scale and the b_dec initialisation."""
    b_dec_init: str = "geometric_median"
    """geometric_median (FAST) | mean | zeros (Gemma Scope)."""
    dead_window_tokens: int = 4_096_000
    """A latent is dead (for TopK's AuxK loss) if it has not fired (> 1e-8) in this many tokens (FAST: 1000 steps x
    4096); as in SAELens and sparsify, nothing is dead before a full window has passed. The logged dead share counts
    latents silent in min(this, tokens seen so far)."""
    dead_window_cap: bool = False
    """AuxK treats latents silent in all the tokens seen so far as dead before a full window has passed (chatsae's
    behaviour before 2026-12-01; AuxK is then active from the 2nd step)."""
    log_every: int = field(default=10, metadata=RESUME_MAY_CHANGE)
    """Steps between lines of the JSONL metrics log."""
    checkpoint_every: int = field(default=200, metadata=RESUME_MAY_CHANGE)
    """Steps between checkpoints (0 disables); a final SAE is always saved."""
    keep_checkpoints: int = field(default=2, metadata=RESUME_MAY_CHANGE)
    """How many recent checkpoints to keep."""
    seed: int = 42
    """Random seed (FAST: 42)."""
    device: str = field(default="auto", metadata=RESUME_MAY_CHANGE)
    """auto | cpu | cuda | cuda:N | mps."""
    autocast: str = "none"
    """Mixed precision for the SAE forward on CUDA: none | bf16 | fp16 (parameters stay float32)."""
    tf32: bool = True
    """CUDA: allow TF32 matmuls (faster on Ampere and later; --no-tf32 for full float32). No effect on CPU."""
    compile: bool = field(default=False, metadata=RESUME_MAY_CHANGE)
    """torch.compile the SAE's loss (CUDA: faster steps after a warm-up compile)."""
    prefetch: int = field(default=2, metadata=RESUME_MAY_CHANGE)
    """CUDA: batches read ahead in a background thread into pinned host memory (0 disables). No effect on CPU."""
    tracking: str = field(default="none", metadata=RESUME_MAY_CHANGE)
    """Also send the metrics log to: none | tensorboard | wandb | tensorboard,wandb (rank 0; optional extras
    chatsae[tensorboard] / chatsae[wandb]; TensorBoard files in OUT_DIR/tensorboard; WANDB_MODE=offline keeps W&B
    local)."""
    wandb_project: str = field(default="chatsae", metadata=RESUME_MAY_CHANGE)
    """W&B project of --tracking wandb."""
    progress: bool = field(default=True, metadata=RESUME_MAY_CHANGE)
    """Show a progress bar."""

    def __post_init__(self) -> None:
        validate(
            self,
            positive=(
                "total_tokens",
                "batch_size",
                "lr",
                "init_sample_tokens",
                "dead_window_tokens",
                "log_every",
                "keep_checkpoints",
            ),
            non_negative=(
                "lr_end",
                "lr_warmup_steps",
                "lr_warmup_start_factor",
                "adam_eps",
                "sparsity_coef",
                "sparsity_warmup_steps",
                "grad_clip_norm",
                "checkpoint_every",
                "prefetch",
            ),
            seeds=("seed",),
            ranges={"beta1": "[0,1)", "beta2": "[0,1)"},
            choices={
                "lr_decay": ("cosine", "linear", "constant"),
                "b_dec_init": ("geometric_median", "mean", "zeros"),
                "autocast": ("none", "bf16", "fp16"),
            },
            devices=("device",),
        )

        try:
            # before a harvest: a missing package fails at once (looked up at call time: tests stand a module in)
            tracking.check_installed(tracking.parse_backends(self.tracking))
        except ValueError as e:
            raise ConfigError(str(e).removeprefix("--tracking"), "tracking") from None
        for name in ("lr_warmup_steps", "sparsity_warmup_steps"):
            value = getattr(self, name)
            check(
                value < 1 or float(value).is_integer(),
                name,
                f"must be a whole number of steps (>= 1) or a fraction of the run (< 1), got {value}",
            )
        check(
            self.autocast == "none" or resolve_device(self.device).type == "cuda",
            "autocast",
            f"{self.autocast} has no effect on --device {self.device} (autocast runs on CUDA only); drop it",
        )
        check(
            self.total_tokens >= self.batch_size,
            "total_tokens",
            f"({self.total_tokens}) must be >= --batch-size ({self.batch_size})",
        )

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size
