"""The forward passes of an evaluation and their per-position next-token losses: clean, with the SAE's reconstruction
spliced in at the hook, and zero-ablated; restarted at the hook layer from the clean pass's state where the model
allows it, with the prefix every row shares run once (:mod:`chatsae.models.prefix`), and the zero-ablated losses from
one short pass where :mod:`chatsae.eval.zero_ablation` applies. Each way gives the same losses."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..models import HookPoint, check_hook, edit
from ..models.prefix import (
    SplitLogits,
    can_share_prefix,
    clean_forward_shared,
    edited_forward_shared,
    shared_prefix_length,
)
from ..models.resume import Checkpoint, can_resume, clean_forward, resumed_logits
from . import metrics as M
from .zero_ablation import keep_first, zero_ablated_losses, zeroing


class LMLosses(NamedTuple):
    """Per-position losses ``[B, T]`` of one batch (0 where ``mask`` is false); ``ce_zero`` None when skipped."""

    ce_clean: Tensor
    ce_spliced: Tensor
    kl: Tensor
    ce_zero: Tensor | None
    mask: Tensor


def _logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


@torch.inference_mode()
def spliced_losses(
    model: nn.Module,
    hook: str | HookPoint,
    input_ids: Tensor,
    attention_mask: Tensor,
    fn: Callable[[Tensor], Tensor],
    zero_ablation: bool = True,
    splice_first_position: bool = True,
    ce_zero: Tensor | None = None,
    restart: bool | None = None,
    share_prefix: bool = True,
) -> LMLosses:
    """Clean vs. spliced (activation at ``hook`` replaced by ``fn(act)``) vs. zero-ablated next-token losses.

    ``input_ids``/``attention_mask`` ``[B, T]``. With ``splice_first_position=False`` position 0 keeps its clean
    activation in both the spliced and the zero-ablated pass. ``ce_zero`` ``[B, T]``: the zero-ablated losses of
    these inputs computed before (the pass is then skipped). ``restart``: run the edited passes from the hook layer
    on, from the clean pass's state, and the zero-ablated one as one short pass where
    :func:`~chatsae.eval.zero_ablation.zero_ablated_losses` applies (None = where
    :func:`~chatsae.models.resume.can_resume`); with ``share_prefix`` too, the prefix every row shares runs once
    (:mod:`chatsae.models.prefix`). Same results.
    """
    return spliced_losses_many(
        model,
        hook,
        input_ids,
        attention_mask,
        [fn],
        zero_ablation,
        splice_first_position,
        ce_zero,
        restart,
        share_prefix,
    )[0]


Logits = Tensor | SplitLogits


def loss_by_part(
    loss: Callable[..., tuple[Tensor, ...]], logits: list[Logits], labels: Tensor, mask: Tensor
) -> tuple[Tensor, ...]:
    """``loss(*logits, labels, mask)`` (per-position ``[B, T]`` tensors); for :class:`SplitLogits` the prefix's
    positions are scored once (but the last, whose label is each row's first token after it) and spread to every
    row."""
    if not isinstance(logits[0], SplitLogits):
        return loss(*logits, labels, mask)
    split = [lg for lg in logits if isinstance(lg, SplitLogits)]
    rows, last = labels.shape[0], split[0].prefix.shape[1] - 1
    head = loss(*(s.prefix[:, :last] for s in split), labels[:1, :last], mask[:1, :last])
    edge = loss(
        *(s.prefix[:, last:].expand(rows, -1, -1) for s in split), labels[:, last : last + 1], mask[:, last : last + 1]
    )
    tail = loss(*(s.rest for s in split), labels[:, last + 1 :], mask[:, last + 1 :])
    return tuple(
        torch.cat([h.expand(rows, -1) * mask[:, :last], e, t], dim=1) for h, e, t in zip(head, edge, tail, strict=True)
    )


@torch.inference_mode()
def spliced_losses_many(
    model: nn.Module,
    hook: str | HookPoint,
    input_ids: Tensor,
    attention_mask: Tensor,
    fns: list[Callable[[Tensor], Tensor]],
    zero_ablation: bool = True,
    splice_first_position: bool = True,
    ce_zero: Tensor | None = None,
    restart: bool | None = None,
    share_prefix: bool = True,
) -> list[LMLosses]:
    """:func:`spliced_losses` for several splice functions at one hook from **one** clean pass (and one
    zero-ablated pass, shared: it does not depend on the splice); one :class:`LMLosses` per function, in order."""
    point = check_hook(model, hook)
    labels, mask = M.next_token_labels(input_ids, attention_mask)
    if restart is None:
        restart = can_resume(model)
    prefix = shared_prefix_length(input_ids, attention_mask) if restart and share_prefix else 0
    if prefix and not can_share_prefix(model):
        prefix = 0
    ckpt: Checkpoint | None = None
    clean: Logits
    if prefix:
        clean, ckpt, shared = clean_forward_shared(model, point, input_ids, attention_mask, prefix)
        act = ckpt.act

        def edited(f: Callable[[Tensor], Tensor]) -> Logits:
            return edited_forward_shared(model, shared, input_ids, attention_mask, f(act))
    elif restart:
        clean, start = clean_forward(model, point, input_ids, attention_mask)
        ckpt = start

        def edited(f: Callable[[Tensor], Tensor]) -> Logits:
            return resumed_logits(model, start, input_ids, attention_mask, f)
    else:
        clean = _logits(model, input_ids, attention_mask)

        def edited(f: Callable[[Tensor], Tensor]) -> Logits:
            with edit(model, point, f):
                return _logits(model, input_ids, attention_mask)

    losses = []
    for fn in fns:
        splice = fn if splice_first_position else keep_first(fn)
        losses.append(loss_by_part(M.paired_losses, [clean, edited(splice)], labels, mask))
    del clean
    if zero_ablation and ce_zero is None and restart:  # one short pass instead (module chatsae.eval.zero_ablation)
        ce_zero = zero_ablated_losses(
            model, point, input_ids, attention_mask, labels, mask, splice_first_position, ckpt
        )
    if zero_ablation and ce_zero is None:
        (ce_zero,) = loss_by_part(
            lambda lg, lab, m: (M.token_cross_entropy(lg, lab, m),),
            [edited(zeroing(splice_first_position))],
            labels,
            mask,
        )
    return [
        LMLosses(ce_clean, ce_spliced, kl, ce_zero if zero_ablation else None, mask)
        for ce_clean, ce_spliced, kl in losses
    ]
