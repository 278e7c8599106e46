"""The zero-ablated losses (CE recovered's reference) of a whole batch from one short pass.

Zero-ablating a residual-stream hook (``resid_pre.L`` / ``resid_post.L``) sets the residual stream to zero at every
position (position 0 keeps its clean state unless ``splice_first_position``). From there on, what the blocks compute
at position ``t`` depends only on ``t`` and on position 0's state — attention mixes states that are all zero but
position 0's, rotary / learned position terms depend on ``t`` only, the rest acts per position — and position 0's
state depends only on the first token (causal attention). So the zero-ablated logits at position ``t`` are the same
in every sequence that starts with the same token, and the per-token CE of a right-padded batch ``[B, T]`` is read
off one pass over ``[n, T]`` rows, one per distinct first token: ``n = 1`` for chat data (every sample starts with
the template's first token). With the clean pass's checkpoint that short pass restarts at the hook too, so it costs
``n / B`` of the restarted zero-ablated pass it replaces.

This holds for the families of :data:`POSITION_ONLY` (their blocks read nothing but the hidden states and the
positions; each is tested against the full zero-ablated pass) and for residual-stream hooks only: zero-ablating
``attn_out`` / ``mlp_out`` leaves the residual stream, and so the tokens, in place. Elsewhere (and for left-padded
batches, or when the rows' first tokens are too varied for a saving: blocks of pretraining text) ``None`` tells the
caller to run the zero-ablated pass itself. Same values up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..models import HookPoint, edit
from ..models.hooks import replace_first_output
from ..models.resume import RESUMABLE, Checkpoint, resumed_logits
from . import metrics as M

POSITION_ONLY = RESUMABLE
"""``config.model_type`` values whose blocks above a zeroed residual stream depend on positions only (tested for
each: ``tests/test_eval_zero_ablation.py``)."""

MAX_ROW_FRACTION = 0.5
"""Use the short pass when its rows (distinct first tokens) are at most this fraction of the batch's rows (without a
checkpoint it is a full pass over ``n`` rows, against a pass restarted at the hook over all ``B`` rows)."""


def keep_first(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Wrap a splice function so that position 0 keeps its clean activation."""

    def wrapped(act: Tensor) -> Tensor:
        new = fn(act).to(act.dtype).clone()
        new[:, :1] = act[:, :1]
        return new

    return wrapped


def zeroing(splice_first_position: bool) -> Callable[[Tensor], Tensor]:
    """The zero-ablation splice: zeros everywhere, or everywhere but position 0."""
    return torch.zeros_like if splice_first_position else keep_first(torch.zeros_like)


def _right_padded(attention_mask: Tensor) -> bool:
    """Every row's real tokens come first (no left padding; rows of only padding are not allowed)."""
    am = attention_mask.bool()
    return bool(am[:, 0].all()) and bool((am[:, :-1] | ~am[:, 1:]).all())


def canonical_rows(
    model: nn.Module, point: HookPoint, input_ids: Tensor, attention_mask: Tensor, splice_first_position: bool
) -> tuple[Tensor, Tensor] | None:
    """``(representative rows [n], representative of each row [B])`` when the short pass applies to this batch, else
    None: the first row with each distinct first token (just row 0 when position 0 is zeroed too)."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    if model_type not in POSITION_ONLY or point.kind not in ("resid_pre", "resid_post"):
        return None
    if not _right_padded(attention_mask):
        return None
    first = input_ids[:, 0]
    if splice_first_position:  # position 0 zeroed too: nothing of the tokens is left
        return first.new_zeros(1), torch.zeros_like(first)
    tokens, group = torch.unique(first, return_inverse=True)
    if tokens.numel() > MAX_ROW_FRACTION * input_ids.shape[0]:
        return None
    order = torch.arange(first.numel(), device=first.device)
    reps = torch.full_like(tokens, first.numel()).scatter_reduce(0, group, order, "amin")
    return reps, group


@torch.inference_mode()
def zero_ablated_losses(
    model: nn.Module,
    point: HookPoint,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    mask: Tensor,
    splice_first_position: bool,
    ckpt: Checkpoint | None = None,
) -> Tensor | None:
    """Per-token CE ``[B, T]`` (float32, 0 where ``mask`` is false) of the zero-ablated pass of ``input_ids`` /
    ``attention_mask`` ``[B, T]`` with next-token ``labels``, from one pass over one row per distinct first token;
    None where that does not apply (see the module docstring). ``ckpt``: the clean pass's checkpoint at ``point``
    (:func:`~chatsae.models.resume.clean_forward`); the short pass then restarts at the hook as well."""
    found = canonical_rows(model, point, input_ids, attention_mask, splice_first_position)
    if found is None:
        return None
    reps, group = found
    zero = zeroing(splice_first_position)
    # the representatives' own tokens; no padding mask: every position but 0 is zeroed at the hook, and position 0
    # (causal) never saw the padding
    ids = input_ids[reps]
    if ckpt is not None:
        state = ckpt.state[reps]
        rows = Checkpoint(ckpt.point, ckpt.act[reps], state, replace_first_output(ckpt.template, state))
        logits = resumed_logits(model, rows, ids, None, zero)
    else:
        with edit(model, point, zero):
            logits = model(input_ids=ids, use_cache=False).logits  # [n, T, V]
    length = input_ids.shape[1]
    flat = logits.reshape(-1, logits.shape[-1])
    lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    steps, chunk = M._chunks(flat.shape[0], None, flat.device)
    for i in steps:
        lse[i : i + chunk] = torch.logsumexp(flat[i : i + chunk].float(), dim=-1)
    positions = torch.arange(length, device=input_ids.device)[None, :]
    picked = logits[group[:, None], positions, labels].float()  # [B, T]
    return (lse.view(-1, length)[group] - picked) * mask
