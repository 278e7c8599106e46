"""Running the prefix that every row of a batch shares once per pass instead of once per row.

FAST batches are chat samples rendered with one template, and many templates open every sample with the same tokens
(SmolLM2's and Qwen 2.5's default system prompt: 24 tokens of SmolLM2's ``<|im_start|>system ... <|im_start|>user``,
~14% of an average sample of chatsae's data). With causal attention those positions compute the same states in every
row, so a pass over a right-padded batch ``[B, T]`` whose rows share their first ``P`` real tokens is:

1. one row over the prefix ``[1, P]`` (keeping its KV cache),
2. the cache repeated ``B`` times, and all rows over the rest ``[B, T - P]`` attending to it.

Harvesting (:func:`capture_sharing_prefix`) captures the hooks' activations that way, each part stopping after
the last hook. For evaluation, the clean pass (:func:`clean_forward_shared`) records a checkpoint for each part; an
edited pass (:func:`edited_forward_shared`) takes the new activation of the whole batch ``[B, T, d]`` (known after
the clean pass: below the hook nothing changes), runs the prefix again with it (a full pass over ``P`` tokens: its
cache must hold the edited keys and values of the blocks above the hook) and restarts the rest at the hook
(:mod:`chatsae.models.resume`). Logits come back split (:class:`SplitLogits`): the prefix's once, the rest's per
row. Same values as plain passes up to float rounding (the matrix shapes differ); tested on every family of
:data:`SHARES_PREFIX` against them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import transformers
from torch import Tensor, nn
from transformers import DynamicCache

from .hooks import HookPoint, capture_many, check_hook, edit, replace_first_output
from .resume import RESUMABLE, Checkpoint, cache_argument, checkpointing, model_logits, resumed

SHARES_PREFIX = RESUMABLE
"""``config.model_type`` values whose prefix-shared passes the tests compare with plain ones (transformers >= 5)."""

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

MIN_PREFIX = 8
"""Share a prefix of at least this many tokens (below that the extra call costs about what it saves)."""


class SplitLogits(NamedTuple):
    """Logits of a batch whose rows share a prefix: ``prefix [1, P, V]`` (every row's) and ``rest [B, T - P, V]``."""

    prefix: Tensor
    rest: Tensor


class SharedPrefix(NamedTuple):
    """What a shared clean pass leaves for the edited passes: the prefix length ``P`` and the checkpoints of the
    prefix (``[1, P]``) and of the rest (``[B, T - P]``) at the hook."""

    length: int
    prefix: Checkpoint
    rest: Checkpoint


def can_share_prefix(model: nn.Module) -> bool:
    """A family of :data:`SHARES_PREFIX` under transformers 5 or later (its cache handles what this module does)."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    return model_type in SHARES_PREFIX and TRANSFORMERS_MAJOR >= 5 and cache_argument(model) is not None


def shared_prefix_length(input_ids: Tensor, attention_mask: Tensor, min_tokens: int = MIN_PREFIX) -> int:
    """Length ``P`` of the longest run of real tokens at the start that every row of ``input_ids`` ``[B, T]`` has in
    common, at most ``T - 1``; 0 when it is shorter than ``min_tokens`` or there is a single row."""
    rows, length = input_ids.shape
    if rows < 2 or length < 2:
        return 0
    same = ((input_ids == input_ids[:1]) & attention_mask.bool()).all(dim=0)
    differ = (~same).nonzero()
    found = int(differ[0, 0]) if differ.numel() else length
    found = min(found, length - 1)
    return found if found >= min_tokens else 0


def _forward_cached(model: nn.Module, input_ids: Tensor) -> tuple[Tensor, Any]:
    out = model(input_ids=input_ids, use_cache=True)
    cache = out.get("cache")  # transformers >= 5.2x; before: past_key_values
    return out.logits, out.past_key_values if cache is None else cache


def _repeat(cache: Any, rows: int) -> Any:
    cache.batch_repeat_interleave(rows)
    return cache


def _join(point: HookPoint, prefix: Checkpoint, rest: Checkpoint) -> Checkpoint:
    rows = rest.state.shape[0]
    state = torch.cat([prefix.state.expand(rows, -1, -1), rest.state], dim=1)
    act = state if rest.act is rest.state else torch.cat([prefix.act.expand(rows, -1, -1), rest.act], dim=1)
    return Checkpoint(point, act, state, replace_first_output(rest.template, state))


def clean_forward_shared(
    model: nn.Module, point: HookPoint, input_ids: Tensor, attention_mask: Tensor, length: int
) -> tuple[SplitLogits, Checkpoint, SharedPrefix]:
    """The clean pass of ``input_ids`` / ``attention_mask`` ``[B, T]`` whose rows share their first ``length``
    tokens: split logits, the whole batch's :class:`Checkpoint` at ``point`` (``[B, T, d]``, as
    :func:`~chatsae.models.resume.clean_forward` gives) and the parts for :func:`edited_forward_shared`."""
    with checkpointing(model, point) as checkpoint:
        head, cache = _forward_cached(model, input_ids[:1, :length])
    first = checkpoint()
    with checkpointing(model, point) as checkpoint:
        rest = model_logits(model, input_ids[:, length:], attention_mask, _repeat(cache, input_ids.shape[0]))
    second = checkpoint()
    return SplitLogits(head, rest), _join(point, first, second), SharedPrefix(length, first, second)


def edited_forward_shared(
    model: nn.Module, shared: SharedPrefix, input_ids: Tensor, attention_mask: Tensor, new: Tensor
) -> SplitLogits:
    """Split logits of the pass whose activation at the hook is ``new`` ``[B, T, d]`` (rows identical over the
    prefix), for the inputs of :func:`clean_forward_shared` that gave ``shared``."""
    length, point = shared.length, shared.prefix.point

    def part(value: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda _act: value

    with edit(model, point, part(new[:1, :length])):
        head, cache = _forward_cached(model, input_ids[:1, :length])
    rest = new[:, length:]
    with resumed(model, shared.rest), edit(model, point, part(rest)):
        tail = model_logits(model, input_ids[:, length:], attention_mask, _repeat(cache, input_ids.shape[0]))
    return SplitLogits(head, tail)


def capture_sharing_prefix(
    model: nn.Module, hooks: list[HookPoint], input_ids: Tensor, attention_mask: Tensor, share: bool = True
) -> dict[HookPoint, Tensor]:
    """:func:`~chatsae.models.hooks.capture_many` (stopping after the last hook) of ``input_ids`` /
    ``attention_mask`` ``[B, T]``; with ``share``, where the rows share a prefix (:func:`shared_prefix_length`) and
    the model can (:func:`can_share_prefix`), the prefix runs over one row and every row over the rest against its
    KV cache. ``{hook: [B, T, d]}``."""
    reaches_attention = any(h.layer > 0 or h.kind != "resid_pre" for h in hooks)  # else block 0 fills no cache
    length = shared_prefix_length(input_ids, attention_mask) if share and reaches_attention else 0
    if not length or not can_share_prefix(model):
        return capture_many(model, hooks, input_ids, attention_mask)

    name, rows = cache_argument(model) or "past_key_values", input_ids.shape[0]
    config: Any = model.config
    cache = DynamicCache(config=config)  # filled up to the last hook's block, the pass stopping there
    first: dict[str, Any] = {"use_cache": True, name: cache}
    head = capture_many(model, hooks, input_ids[:1, :length], None, **first)
    rest = capture_many(model, hooks, input_ids[:, length:], attention_mask, **{**first, name: _repeat(cache, rows)})
    return {h: torch.cat([head[h].expand(rows, -1, -1), rest[h]], dim=1) for h in hooks}


def capture_shared(
    model: nn.Module, hook: str | HookPoint, input_ids: Tensor, attention_mask: Tensor, share: bool = True
) -> Tensor:
    """:func:`~chatsae.models.hooks.capture` (``[B, T, d]`` at ``hook``) through :func:`capture_sharing_prefix`."""
    point = check_hook(model, hook)
    return capture_sharing_prefix(model, [point], input_ids, attention_mask, share)[point]
