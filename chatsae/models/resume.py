"""Restarting a forward pass at the hook layer from a clean pass's cached hidden state.

An edit at ``kind.L`` leaves every block below ``L`` unchanged, so after one clean forward (which stores the
residual stream where the edited pass diverges) the edited passes only need the blocks from ``L`` on:

- ``resid_post.L``: the state is ``resid_post.L``; blocks ``0..L`` are skipped (block ``L`` returns the state, then
  the edit hook on block ``L`` replaces it as usual);
- ``resid_pre.L``, ``attn_out.L``, ``mlp_out.L``: the state is ``resid_pre.L``; blocks ``0..L-1`` are skipped and
  block ``L`` runs on the state (the edit hook then fires inside or before it as usual).

Skipped blocks return their input unchanged in the blocks' own output format (a tensor, or a tuple in older
transformers), so the model's own forward still embeds the tokens and builds the masks and rotary embeddings; only
the decoder blocks below the hook are not run. A restarted pass must use the same ``input_ids``/``attention_mask``
as the clean pass. Families whose forward is known to pass the hidden state straight from block to block are in
:data:`RESUMABLE`; any other model is checked once on a short probe and otherwise falls back to full forward passes
(with a one-time notice).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .hooks import HookPoint, check_hook, decoder_layers, edit, first_output, register_hook, replace_first_output

RESUMABLE = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "gpt2", "gpt_neox"}
)
"""``config.model_type`` values checked by the tests (restarted logits == full spliced logits)."""


@dataclass
class Checkpoint:
    """What a clean pass leaves for restarting at ``point``.

    ``act [B, T, d]``: the clean activation at the hook; ``state [B, T, d]``: the residual stream the restarted pass
    starts from (``resid_post.L`` for ``resid_post`` hooks, else ``resid_pre.L``); ``template``: block ``L``'s output
    (tensor or tuple), whose structure skipped blocks mimic.
    """

    point: HookPoint
    act: Tensor
    state: Tensor
    template: Any


def cache_argument(model: nn.Module) -> str | None:
    """The name under which ``model.forward`` takes a KV cache (``cache`` since transformers 5.2x, formerly
    ``past_key_values``); None if it takes none."""
    names = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in names), None)


def model_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, cache: Any = None) -> Tensor:
    kwargs: dict[str, Any] = {"use_cache": cache is not None}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    if cache is not None:
        kwargs[cache_argument(model) or "past_key_values"] = cache
    return model(input_ids=input_ids, **kwargs).logits


@contextlib.contextmanager
def checkpointing(model: nn.Module, point: HookPoint) -> Iterator[Callable[[], Checkpoint]]:
    """Within the block, a forward pass records what restarting at ``point`` needs; the yielded function returns it
    as a :class:`Checkpoint` once the pass has run."""
    block = decoder_layers(model)[point.layer]
    seen: dict[str, Any] = {}

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        seen["pre"] = args[0] if args else kwargs["hidden_states"]

    def post(_m: nn.Module, _args: tuple, output: Any) -> None:
        seen["out"] = output

    def read(act: Tensor) -> None:
        seen["act"] = act

    def result() -> Checkpoint:
        state = first_output(seen["out"]) if point.kind == "resid_post" else seen["pre"]
        return Checkpoint(point, seen.get("act", state), state, seen["out"])

    handles = [block.register_forward_pre_hook(pre, with_kwargs=True), block.register_forward_hook(post)]
    if point.kind in ("attn_out", "mlp_out"):
        handles.append(register_hook(model, point, read))
    try:
        yield result
    finally:
        for h in handles:
            h.remove()


def clean_forward(
    model: nn.Module, hook: str | HookPoint, input_ids: Tensor, attention_mask: Tensor | None = None
) -> tuple[Tensor, Checkpoint]:
    """One full clean forward: logits ``[B, T, V]`` and the :class:`Checkpoint` at ``hook``."""
    point = check_hook(model, hook)
    with checkpointing(model, point) as checkpoint:
        logits = model_logits(model, input_ids, attention_mask)
    return logits, checkpoint()


def _check(point: HookPoint, got: Tensor, state: Tensor) -> None:
    if got.shape != state.shape:
        raise ValueError(
            f"restart at '{point}': this pass has hidden states {tuple(got.shape)} but the checkpoint "
            f"has {tuple(state.shape)}; restart with the clean pass's own inputs"
        )


@contextlib.contextmanager
def resumed(model: nn.Module, ckpt: Checkpoint) -> Iterator[None]:
    """Within the block, forward passes (over the checkpoint's inputs) skip the blocks below the hook and start from
    ``ckpt.state``. Compose with :func:`~chatsae.models.hooks.edit` at ``ckpt.point`` to edit the restarted pass."""
    point, layers = ckpt.point, decoder_layers(model)
    n_skip = point.layer + 1 if point.kind == "resid_post" else point.layer
    originals: list[tuple[nn.Module, bool, Any]] = []

    def skip(index: int) -> Callable[..., Any]:
        last = point.kind == "resid_post" and index == point.layer

        def forward(*args: Any, **kwargs: Any) -> Any:
            hidden = args[0] if args else kwargs["hidden_states"]
            _check(point, hidden, ckpt.state)
            return replace_first_output(ckpt.template, ckpt.state if last else hidden)

        return forward

    def pre(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        _check(point, hidden, ckpt.state)
        if args:
            return (ckpt.state, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": ckpt.state}

    handle = None
    try:
        for i in range(n_skip):
            block = layers[i]
            originals.append((block, "forward" in block.__dict__, block.__dict__.get("forward")))
            block.forward = skip(i)
        if point.kind != "resid_post":
            handle = layers[point.layer].register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
        yield
    finally:
        if handle is not None:
            handle.remove()
        for block, had, fwd in originals:
            if had:
                block.forward = fwd
            else:
                del block.forward


def resumed_logits(
    model: nn.Module,
    ckpt: Checkpoint,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    fn: Callable[[Tensor], Tensor],
    cache: Any = None,
) -> Tensor:
    """Logits ``[B, T, V]`` of the pass with the activation at ``ckpt.point`` replaced by ``fn(act)``, restarted at
    the hook layer; the same as ``with edit(model, hook, fn): model(input_ids, attention_mask)``. ``cache``: a KV
    cache of the tokens before ``input_ids`` (``attention_mask`` then covers both), extended by this pass."""
    with resumed(model, ckpt), edit(model, ckpt.point, fn):
        return model_logits(model, input_ids, attention_mask, cache)


_NOTICED: set[str] = set()


def _probe(model: nn.Module) -> bool:
    """Restart an identity edit at the middle block on a short sequence and compare with the full forward."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings  # type: ignore[operator]  # Tensor | Module attribute typing
    ids = torch.arange(1, 9, device=device)[None] % vocab
    point = HookPoint("resid_post", len(decoder_layers(model)) // 2)
    with torch.inference_mode():
        full, ckpt = clean_forward(model, point, ids)
        again = resumed_logits(model, ckpt, ids, None, lambda a: a)
    return bool(torch.allclose(full, again, rtol=1e-4, atol=1e-4 * float(full.abs().max())))


def can_resume(model: nn.Module) -> bool:
    """Whether restarted passes are exact on ``model``: a family of :data:`RESUMABLE`, or a passing probe (checked
    once per model). Prints a one-time notice when not (callers then run full forward passes)."""
    cached = getattr(model, "_chatsae_resumable", None)
    if cached is not None:
        return bool(cached)
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    ok = model_type in RESUMABLE
    if not ok:
        try:
            ok = _probe(model)
        except Exception:  # noqa: BLE001 - any failure means "not resumable here"
            ok = False
    with contextlib.suppress(AttributeError, TypeError):
        model._chatsae_resumable = ok  # type: ignore[assignment]  # a plain attribute, not a Module/Tensor
    if not ok and model_type not in _NOTICED:
        _NOTICED.add(model_type)
        print(
            f"chatsae: cannot restart {type(model).__name__} passes at the hook layer; evaluation runs full "
            "forward passes (slower, same results)",
            file=sys.stderr,
        )
    return ok
