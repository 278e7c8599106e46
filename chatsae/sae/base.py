"""The base class shared by every SAE architecture, its config and its typed outputs.

Shapes: ``x`` is ``[..., d_in]``, latents ``f`` are ``[..., d_sae]``. ``W_enc`` is ``[d_in, d_sae]`` and ``W_dec`` is
``[d_sae, d_in]`` (SAELens layout). Each architecture implements :meth:`SAE.encode_with_pre` and :meth:`SAE.loss`
in its own module; everything else (init, decoding, decoder-norm constraint, scale folding, saving) lives here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ..core.config import check, validate


@dataclass
class SAEConfig:
    """Shape and architecture of a sparse autoencoder."""

    architecture: str = "jumprelu"
    """Architecture: jumprelu | standard | topk | gated | batchtopk | matryoshka."""
    d_in: int = 576
    """Width of the activations (the model's d_model for residual-stream hooks)."""
    d_sae: int = 4608
    """Number of latents (8x d_in by default, as in the FAST paper)."""
    k: int = 32
    """TopK: number of latents kept per token; batchtopk / matryoshka: mean number kept per token (k x batch rows
    kept across the whole batch in training)."""
    apply_b_dec_to_input: bool | None = None
    """Subtract b_dec from x before encoding. None = architecture default (False for jumprelu, True otherwise)."""
    decoder_unit_norm: bool | None = None
    """Keep decoder rows at unit norm (removing the parallel gradient first). None = architecture default
    (True for jumprelu, topk and gated; False for standard, whose L1 penalty is weighted by decoder norms)."""
    jumprelu_bandwidth: float = 0.001
    """JumpReLU only: bandwidth epsilon of the rectangle-kernel pseudo-derivatives (Gemma Scope: 0.001)."""
    jumprelu_init_threshold: float = 0.001
    """JumpReLU only: initial threshold theta (Gemma Scope: 0.001), in normalised input units."""
    jumprelu_threshold_param: str = "direct"
    """JumpReLU only: train theta directly ("direct") or as log theta ("log"); saved as theta either way."""
    aux_k: int | None = None
    """TopK, batchtopk, matryoshka: number of dead latents used by the AuxK loss (None = d_in // 2)."""
    aux_coef: float = 1.0 / 32.0
    """TopK, batchtopk, matryoshka: coefficient of the AuxK loss (Gao et al.: 1/32)."""
    batchtopk_threshold_lr: float = 0.01
    """batchtopk / matryoshka: rate of the moving average that estimates the inference threshold from each training
    batch's smallest kept activation (SAELens's topk_threshold_lr)."""
    matryoshka_prefixes: list[int] | None = None
    """matryoshka only: nested dictionary widths, strictly increasing, the last = d_sae (None = d_sae/16, /8, /4, /2,
    d_sae); the loss sums the reconstruction losses of the prefixes."""
    dtype: str = "float32"
    """Parameter dtype."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance: model name, hook name, method, context size, ... (saved in cfg.json)."""

    def __post_init__(self) -> None:
        check(
            self.architecture in _ARCH_DEFAULTS,
            "architecture",
            f"must be one of {', '.join(sorted(_ARCH_DEFAULTS))}; got {self.architecture!r}",
        )
        defaults = _ARCH_DEFAULTS[self.architecture]
        if self.apply_b_dec_to_input is None:
            self.apply_b_dec_to_input = defaults[0]
        if self.decoder_unit_norm is None:
            self.decoder_unit_norm = defaults[1]
        validate(
            self,
            positive=("d_in", "d_sae", "k", "jumprelu_bandwidth", "aux_k"),
            non_negative=("jumprelu_init_threshold", "aux_coef"),
            ranges={"batchtopk_threshold_lr": "(0,1]"},
            choices={"jumprelu_threshold_param": ("direct", "log")},
            dtypes=("dtype",),
        )
        if self.architecture in K_ARCHITECTURES:
            check(self.k <= self.d_sae, "k", f"must be in 1..d_sae={self.d_sae}, got {self.k}")
        if self.matryoshka_prefixes is not None:  # the last width = d_sae is checked when used (d_sae may change)
            w = self.matryoshka_prefixes
            ok = (
                bool(w)
                and all(isinstance(v, int) and v > 0 for v in w)
                and all(a < b for a, b in zip(w, w[1:], strict=False))
            )
            check(ok, "matryoshka_prefixes", f"must be a strictly increasing list of positive integers, got {w}")
        if self.jumprelu_threshold_param == "log":
            check(self.jumprelu_init_threshold > 0, "jumprelu_init_threshold", "must be > 0 with log thresholds")

    def prefix_widths(self) -> list[int]:
        """Matryoshka prefix widths: ``matryoshka_prefixes`` or d_sae/16, /8, /4, /2, d_sae (zeros and repeats
        dropped); ConfigError unless strictly increasing, positive and ending at d_sae."""
        if self.matryoshka_prefixes is None:
            return sorted({self.d_sae // d for d in (16, 8, 4, 2, 1)} - {0})
        widths = list(self.matryoshka_prefixes)
        check(widths[-1] == self.d_sae, "matryoshka_prefixes", f"must end at d_sae={self.d_sae}, got {widths}")
        return widths

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# architecture -> (apply_b_dec_to_input, decoder_unit_norm)
_ARCH_DEFAULTS: dict[str, tuple[bool, bool]] = {
    "jumprelu": (False, True),
    "standard": (True, False),
    "topk": (True, True),
    "gated": (True, True),
    "batchtopk": (True, True),
    "matryoshka": (True, True),
}
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka")
"""Architectures whose sparsity is set by ``k`` (no sparsity coefficient)."""


FIRE_THRESHOLD = 1e-8
"""A latent fires on a token when its activation exceeds this (firing counts, dead latents)."""


class LossOutput(NamedTuple):
    """What :meth:`SAE.loss` returns. Scalars are batch means; ``feature_acts`` is ``[batch, d_sae]``."""

    loss: Tensor
    """Total loss that is back-propagated."""
    mse: Tensor
    """Squared error summed over dims, mean over the batch."""
    sparsity: Tensor
    """Sparsity penalty before its coefficient (L0, or decoder-norm-weighted L1)."""
    aux: Tensor
    """Auxiliary loss already multiplied by its coefficient (AuxK for TopK, frozen-decoder loss for Gated)."""
    feature_acts: Tensor
    x_hat: Tensor
    fire_counts: Tensor | None = None
    """``[d_sae]`` float: rows of the batch on which each latent fired (> :data:`FIRE_THRESHOLD`), when the loss
    has them on the way (the fused kernels); None: count them from ``feature_acts``."""


class SAE(nn.Module, ABC):
    """Base class: encoder ``W_enc, b_enc``, decoder ``W_dec, b_dec``; subclasses add their own parameters."""

    architecture: ClassVar[str]
    saelens_architecture: ClassVar[str] = ""
    """The architecture SAELens loads a saved SAE as ("": the same as ``architecture``)."""
    scale_params: ClassVar[tuple[str, ...]] = ("b_enc", "b_dec")
    """Parameters multiplied by the input scale C when folding normalisation into the weights."""
    has_b_enc: ClassVar[bool] = True

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if self.has_b_enc:
            self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.reset_parameters()

    # ---- initialisation -------------------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """W_dec He-uniform with unit-norm rows, W_enc = W_dec^T (untied afterwards), biases 0."""
        with torch.no_grad():
            bound = math.sqrt(6.0 / self.cfg.d_in)  # He-uniform, fan_in = d_in
            self.W_dec.uniform_(-bound, bound)
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec.T)
            for name, p in self.named_parameters():
                if name.startswith("b_"):
                    p.zero_()

    # ---- forward ---------------------------------------------------------------------------------------------
    def encoder_input(self, x: Tensor) -> Tensor:
        """``x - b_dec`` when ``apply_b_dec_to_input``, else ``x``. [..., d_in]"""
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    @abstractmethod
    def encode_with_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(f, z)``: latent activations and encoder pre-activations, both ``[..., d_sae]``."""

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations ``f`` ``[..., d_sae]`` for inputs ``x`` ``[..., d_in]``."""
        return self.encode_with_pre(x)[0]

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction ``x_hat = f @ W_dec + b_dec`` ``[..., d_in]``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    @abstractmethod
    def loss(self, x: Tensor, sparsity_coef: float, dead_mask: Tensor | None = None) -> LossOutput:
        """Training loss on a batch ``x`` ``[batch, d_in]``; ``dead_mask`` ``[d_sae]`` marks dead latents."""

    # ---- shared loss pieces ----------------------------------------------------------------------------------
    @staticmethod
    def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
        """``||x - x_hat||^2`` summed over dims, mean over the batch."""
        return (x_hat - x).pow(2).sum(dim=-1).mean()

    def decoder_norms(self) -> Tensor:
        """``||W_dec,i||`` ``[d_sae]``."""
        return self.W_dec.norm(dim=1)

    # ---- decoder-norm constraint -----------------------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Remove from each decoder row's gradient its component parallel to the row (rows assumed unit norm)."""
        if not self.cfg.decoder_unit_norm or self.W_dec.grad is None:
            return
        w = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
        parallel = (self.W_dec.grad * w).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * w

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (no-op unless ``decoder_unit_norm``)."""
        if self.cfg.decoder_unit_norm:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # ---- normalisation folding -------------------------------------------------------------------------------
    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``x / scale`` work on raw ``x``: multiply the scale-carrying parameters by it.

        Latent activations come out ``scale`` times larger; reconstructions are exactly ``scale`` times larger.
        """
        for name in self.scale_params:
            getattr(self, name).mul_(scale)

    # ---- state for saving ------------------------------------------------------------------------------------
    def saelens_state_dict(self) -> dict[str, Tensor]:
        """Tensors under the names SAELens uses for this architecture."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def check_saelens_state(self, state: dict[str, Tensor]) -> None:
        """Raise ValueError naming the first missing or wrongly shaped tensor (extra tensors are ignored)."""
        expected = self.saelens_state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"missing tensors {missing} for a {self.architecture} SAE")
        for name, t in expected.items():
            if tuple(state[name].shape) != tuple(t.shape):
                raise ValueError(f"tensor {name!r} has shape {tuple(state[name].shape)}, expected {tuple(t.shape)}")

    def load_saelens_state_dict(self, state: dict[str, Tensor]) -> None:
        self.check_saelens_state(state)
        self.load_state_dict({k: state[k] for k in self.state_dict()})
