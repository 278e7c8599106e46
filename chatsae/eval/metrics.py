"""Evaluation metrics as pure tensor functions (formulas in ``docs/metrics.md``).

Conventions: ``x`` and ``x_hat`` are ``[N, H]`` flat token activations (padding already removed), ``f`` is
``[N, d_sae]`` latent activations, ``seq_ids`` is ``[N]`` int64 (which sequence each token came from). Logits are
``[B, T, V]`` with ``[B, T]`` labels and masks. Scalars come back as 0-dim float64 tensors unless stated otherwise.
The streaming versions (many batches, nothing held) are in :mod:`chatsae.eval.streaming`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# token classes of chatsae.data (TokenSequence.token_class)
TEXT, TEMPLATE, SYSTEM, USER, ASSISTANT = 0, 1, 2, 3, 4

SUBSETS: tuple[str, ...] = (
    "all",
    "all_no_pos0",
    "special",
    "special_no_pos0",
    "special_strict",
    "special_strict_no_pos0",
    "special_prefix",
    "special_turns",
    "system",
    "user",
    "assistant",
    "text",
)
"""Token subsets every metric is reported on. ``special`` = the *template set*: chat-template tokens (TEMPLATE:
the tokenizer's special tokens, role names and the template's newlines; the FAST paper's MSE_st positions, and the
set the headline MSE_st uses). ``special_strict`` = the *strict set*: the tokenizer's special tokens only
(``<|im_start|>``, ``<|im_end|>``, ...; empty unless the caller gives token ids and the special ids).
``*_no_pos0`` leave out position 0 (the attention sink); the per-role subsets (system, user, assistant, text) always
leave it out. The template set without position 0 in two parts: ``special_prefix``, the template tokens before the
first user token of the sequence (the system block: with a fixed system prompt, the same tokens after the same
prefix in every sample), and ``special_turns``, those after it (around each turn, context-dependent)."""

DENSE_THRESHOLD = 0.1
"""A latent is dense if it fires on more than this fraction of tokens (JumpReLU paper)."""


def strict_special(token_ids: Tensor, special_ids: Tensor) -> Tensor:
    """``[N]`` token ids -> ``[N]`` bool: the token is one of the tokenizer's special tokens (``special_ids``)."""
    return torch.isin(token_ids, special_ids.to(token_ids.device))


def before_first_user(token_class: Tensor, positions: Tensor, seq_ids: Tensor) -> Tensor:
    """``[N]`` bool: no user-content token comes earlier in the token's sequence. The N tokens (classes, positions
    in their sequence, sequence ids) may come in any order; a sequence's tokens must all be present."""
    first = torch.full((int(seq_ids.max()) + 1 if seq_ids.numel() else 0,), torch.iinfo(torch.long).max)
    first = first.to(positions.device)
    user = token_class == USER
    first.scatter_reduce_(0, seq_ids[user].long(), positions[user].long(), "amin")
    return positions.long() < first[seq_ids.long()]


def subset_masks(
    token_class: Tensor, positions: Tensor, strict: Tensor | None = None, before_user: Tensor | None = None
) -> dict[str, Tensor]:
    """``[N]`` token classes and positions in their sequence -> ``{subset: [N] bool}`` for every name in SUBSETS.

    ``strict`` ``[N]`` bool marks the tokenizer's special tokens (:func:`strict_special`); None: no token is.
    ``before_user`` ``[N]`` bool marks the tokens before their sequence's first user token
    (:func:`before_first_user`); None: none is (``special_prefix`` empty, ``special_turns`` = the template set
    without position 0)."""
    not0 = positions != 0
    special = token_class == TEMPLATE
    strict = special & strict if strict is not None else torch.zeros_like(not0)
    prefix = special & not0 & before_user if before_user is not None else torch.zeros_like(not0)
    return {
        "all": torch.ones_like(not0),
        "all_no_pos0": not0,
        "special": special,
        "special_no_pos0": special & not0,
        "special_strict": strict,
        "special_strict_no_pos0": strict & not0,
        "special_prefix": prefix,
        "special_turns": special & not0 & ~prefix,
        "system": (token_class == SYSTEM) & not0,
        "user": (token_class == USER) & not0,
        "assistant": (token_class == ASSISTANT) & not0,
        "text": (token_class == TEXT) & not0,
    }


# ---- reconstruction ----------------------------------------------------------------------------------------------
def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """``||x - x_hat||^2`` per token, summed over the H dims, in float64. ``[N]``"""
    return (x.double() - x_hat.double()).pow(2).sum(dim=-1)


def sequence_mse(x: Tensor, x_hat: Tensor, seq_ids: Tensor) -> Tensor:
    """FAST paper Eq. 7: ``MSE = 1/(N·H) · Σ_i 1/L_i · Σ_j Σ_k (y_ijk − ŷ_ijk)²``.

    Each sequence's squared error is averaged over its L_i tokens first, then averaged over the N sequences present
    in ``seq_ids``, and divided by H. Restrict the rows beforehand (e.g. to special tokens) for MSE_st: sequences
    without any row are then simply absent. Equals the flat token mean only when all sequences have equal length.
    """
    if x.shape[0] == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    _, inverse = torch.unique(seq_ids, return_inverse=True)
    n_seq = int(inverse.max()) + 1
    err = squared_error(x, x_hat)
    sums = torch.zeros(n_seq, dtype=torch.float64, device=x.device).index_add_(0, inverse, err)
    counts = torch.zeros(n_seq, dtype=torch.float64, device=x.device).index_add_(0, inverse, torch.ones_like(err))
    return (sums / counts).mean() / x.shape[-1]


def token_mse(x: Tensor, x_hat: Tensor) -> Tensor:
    """Flat mean over tokens and dims, ``Σ_n Σ_k (x_nk − x̂_nk)² / (N·H)`` (long sequences weigh more than in Eq. 7)."""
    return squared_error(x, x_hat).sum() / (x.shape[0] * x.shape[-1])


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained about the mean: ``Σ_n ||x_n − x̂_n||² / Σ_n ||x_n − mean(x)||²``.

    Explained variance is ``1 − FVU``. A constant offset in x does not make FVU small (it does for ``||x||²``).
    """
    xd = x.double()
    return squared_error(x, x_hat).sum() / (xd - xd.mean(dim=0)).pow(2).sum()


def cosine_similarity(x: Tensor, x_hat: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine of the angle between ``x_n`` and ``x̂_n`` per token. ``[N]``"""
    return F.cosine_similarity(x.double(), x_hat.double(), dim=-1, eps=eps)


def relative_norm(x: Tensor, x_hat: Tensor, eps: float = 1e-12) -> Tensor:
    """``||x̂_n|| / ||x_n||`` per token (1 = norm preserved; SAEs usually shrink, < 1). ``[N]``"""
    return x_hat.double().norm(dim=-1) / x.double().norm(dim=-1).clamp_min(eps)


# ---- sparsity ----------------------------------------------------------------------------------------------------
def fired(f: Tensor) -> Tensor:
    """``[N, d_sae]`` bool: latent i fires on token n iff ``f_ni > 0``."""
    return f > 0


def l0(f: Tensor) -> Tensor:
    """Number of firing latents per token, ``||f_n||_0``. ``[N]`` int64"""
    return fired(f).sum(dim=-1)


def firing_frequency(fire_counts: Tensor, n_tokens: int) -> Tensor:
    """Fraction of tokens each latent fires on. ``[d_sae]`` float64"""
    return fire_counts.double() / max(n_tokens, 1)


def dead_latents(frequency: Tensor) -> int:
    """Latents that never fire on the evaluation set."""
    return int((frequency == 0).sum())


def dense_latents(frequency: Tensor, threshold: float = DENSE_THRESHOLD) -> int:
    """Latents that fire on more than ``threshold`` of the tokens."""
    return int((frequency > threshold).sum())


HISTOGRAM_EDGES: tuple[float, ...] = tuple(-8 + 0.5 * i for i in range(17))
"""Fixed bin edges of the log10 firing-frequency histogram, -8 to 0 in steps of 0.5 (stable across runs)."""


def firing_histogram(frequency: Tensor, edges: tuple[float, ...] = HISTOGRAM_EDGES) -> list[int]:
    """Counts of ``log10(frequency)`` in the bins ``[e_i, e_{i+1})``; the last bin is closed and the first one also
    takes values below ``e_0``. Dead latents (frequency 0) are not counted."""
    live = frequency[frequency > 0].double().log10().cpu()
    t_edges = torch.tensor(edges, dtype=torch.float64)
    idx = torch.bucketize(live, t_edges, right=True) - 1  # bin i: edges[i] <= v < edges[i+1]
    idx = idx.clamp(0, len(edges) - 2)  # v == 0 (always firing) goes to the last bin; below lo to the first
    return torch.bincount(idx, minlength=len(edges) - 1).tolist()


# ---- language-model loss -----------------------------------------------------------------------------------------
def next_token_labels(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Labels for next-token prediction within each sequence: ``labels[b, t] = input_ids[b, t+1]``.

    ``mask[b, t]`` is true when both t and t+1 are real (non-padding) tokens, so padding is never a label and the
    last real token of a sequence has no label. Both ``[B, T]``.
    """
    labels = torch.zeros_like(input_ids)
    labels[:, :-1] = input_ids[:, 1:]
    am = attention_mask.bool()
    mask = torch.zeros_like(am)
    mask[:, :-1] = am[:, :-1] & am[:, 1:]
    return labels, mask


CPU_LOSS_CHUNK = 16
"""Positions per loss chunk on CPU: 16 x a 49k vocabulary is ~3 MB of float32, which stays in the core's cache
across the log-softmax, exp and sum passes (3.5x faster than 1,024-position chunks on the embedded model's logits;
benchmarks/eval_cost.py). Other devices take 1,024 positions per chunk (fewer kernel launches)."""


def _chunks(n: int, chunk: int | None, device: torch.device) -> tuple[range, int]:
    size = chunk or (CPU_LOSS_CHUNK if device.type == "cpu" else 1024)
    return range(0, n, size), size


def token_cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor, chunk: int | None = None) -> Tensor:
    """Next-token cross-entropy ``−log softmax(logits)[label]`` per position, 0 where ``mask`` is false.

    ``[B, T, V]``, ``[B, T]``, ``[B, T]`` -> ``[B, T]`` float32. Computed ``chunk`` positions at a time (default
    :data:`CPU_LOSS_CHUNK` on CPU) in float32,
    so that no second ``[B, T, V]`` tensor is made.
    """
    flat, lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    out = torch.zeros(lab.shape[0], dtype=torch.float32, device=logits.device)
    steps, chunk = _chunks(lab.shape[0], chunk, logits.device)
    for i in steps:
        out[i : i + chunk] = F.cross_entropy(flat[i : i + chunk].float(), lab[i : i + chunk], reduction="none")
    return out.view(labels.shape) * mask


def token_kl(clean_logits: Tensor, other_logits: Tensor, mask: Tensor, chunk: int | None = None) -> Tensor:
    """``KL(p_clean ‖ p_other) = Σ_v p_clean(v) (log p_clean(v) − log p_other(v))`` per position, 0 where masked.

    ``[B, T, V]`` twice and ``[B, T]`` -> ``[B, T]`` float32 (clamped at 0 against rounding).
    """
    v = clean_logits.shape[-1]
    a, b = clean_logits.reshape(-1, v), other_logits.reshape(-1, v)
    out = torch.zeros(a.shape[0], dtype=torch.float32, device=a.device)
    steps, chunk = _chunks(a.shape[0], chunk, a.device)
    for i in steps:
        lp = F.log_softmax(a[i : i + chunk].float(), dim=-1)
        lq = F.log_softmax(b[i : i + chunk].float(), dim=-1)
        out[i : i + chunk] = (lp.exp() * (lp - lq)).sum(dim=-1).clamp_min(0)
    return out.view(mask.shape) * mask


def paired_losses(
    clean_logits: Tensor, other_logits: Tensor, labels: Tensor, mask: Tensor, chunk: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(CE clean, CE other, KL(clean ‖ other))`` per position in one pass (one log-softmax per logits and chunk).

    Same values as :func:`token_cross_entropy` twice and :func:`token_kl`; all ``[B, T]`` float32, 0 where masked.
    """
    v = clean_logits.shape[-1]
    a, b, lab = clean_logits.reshape(-1, v), other_logits.reshape(-1, v), labels.reshape(-1, 1)
    out = torch.zeros(3, lab.shape[0], dtype=torch.float32, device=a.device)
    steps, chunk = _chunks(lab.shape[0], chunk, a.device)
    for i in steps:
        lp = F.log_softmax(a[i : i + chunk].float(), dim=-1)
        lq = F.log_softmax(b[i : i + chunk].float(), dim=-1)
        out[0, i : i + chunk] = -lp.gather(-1, lab[i : i + chunk]).squeeze(-1)
        out[1, i : i + chunk] = -lq.gather(-1, lab[i : i + chunk]).squeeze(-1)
        out[2, i : i + chunk] = (lp.exp() * (lp - lq)).sum(dim=-1).clamp_min(0)
    ce_a, ce_b, kl = (t.view(mask.shape) * mask for t in out)
    return ce_a, ce_b, kl


def ce_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    """Fraction of cross-entropy recovered ``(CE_zero − CE_spliced) / (CE_zero − CE_clean)``: 1 = as good as the
    clean model, 0 = as bad as zero-ablating the hook. NaN when zero-ablation does not change the loss."""
    denom = ce_zero - ce_clean
    return (ce_zero - ce_spliced) / denom if denom != 0 else float("nan")


def lm_loss_summary(ce_clean: float, ce_spliced: float, ce_zero: float | None, kl: float) -> dict[str, float | None]:
    """The delta-LM-loss block from mean losses: CE clean / spliced / delta, KL, CE zero-ablated, CE recovered."""
    return {
        "ce_clean": ce_clean,
        "ce_spliced": ce_spliced,
        "delta_ce": ce_spliced - ce_clean,
        "kl": kl,
        "ce_zero": ce_zero,
        "ce_recovered": None if ce_zero is None else ce_recovered(ce_clean, ce_spliced, ce_zero),
    }


def log2(value: float) -> float:
    """``log2`` of a positive value; NaN for NaN, -inf for 0."""
    if math.isnan(value):
        return value
    return math.log2(value) if value > 0 else float("-inf")
