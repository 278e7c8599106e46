"""Hook points inside decoder-only transformers: reading (with stop-at-layer) and editing activations.

Hook kinds, for block ``L`` (0-based):

- ``resid_pre.L``: the residual stream entering block L (forward pre-hook on the block);
- ``resid_post.L``: the residual stream leaving block L (forward hook on the block);
- ``attn_out.L``: what block L's attention adds to the residual stream (after the output projection);
- ``mlp_out.L``: what block L's MLP adds to the residual stream.

Which module produces ``attn_out``/``mlp_out`` depends on the family:

- Llama, Qwen2, Mistral, Gemma 1, GPT-2, GPT-NeoX: the attention module (``self_attn``/``attn``/``attention``;
  its output tuple's first element) and the MLP module (``mlp``/``feed_forward``). GPT-NeoX's dropout after them
  is the identity in eval mode.
- "Sandwich-norm" blocks (Gemma 2/3, OLMo 2, EXAONE 4: blocks with ``post_feedforward_layernorm``): the
  ``post_attention_layernorm`` and ``post_feedforward_layernorm`` outputs, i.e. the normed values actually added
  to the residual stream (the raw attention/MLP outputs are never added as such).

Decoder layers may return a tensor (transformers 5) or a tuple whose first element is the hidden state; both are
read and replaced.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

KINDS = ("resid_pre", "attn_out", "mlp_out", "resid_post")
"""Hook kinds, in the order they happen inside a block."""

_LAYER_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "language_model.model.layers",
    "model.text_model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
    "transformer.blocks",
    "layers",
    "h",
)
_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
_SANDWICH_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")
_SHORT = re.compile(r"^(resid_pre|resid_post|attn_out|mlp_out)\.(\d+)$")
_SAELENS = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)$")


@dataclass(frozen=True)
class HookPoint:
    """A place in the model: ``kind`` (one of :data:`KINDS`) at block ``layer``."""

    kind: str
    layer: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown hook kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise ValueError(f"hook layer must be a non-negative int, got {self.layer!r}")

    @classmethod
    def parse(cls, spec: str | HookPoint) -> HookPoint:
        """``"resid_post.15"`` or SAELens/TransformerLens ``"blocks.15.hook_resid_post"`` -> HookPoint."""
        if isinstance(spec, HookPoint):
            return spec
        text = str(spec).strip()
        if m := _SHORT.match(text):
            return cls(m.group(1), int(m.group(2)))
        if m := _SAELENS.match(text):
            return cls(m.group(2), int(m.group(1)))
        raise ValueError(
            f"unknown hook point {spec!r}; expected KIND.LAYER (e.g. 'resid_post.15') or 'blocks.15.hook_resid_post', "
            f"with KIND one of {', '.join(KINDS)}"
        )

    def __str__(self) -> str:
        return f"{self.kind}.{self.layer}"

    @property
    def saelens_name(self) -> str:
        """The SAELens/TransformerLens name, e.g. ``blocks.15.hook_resid_post``."""
        return f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def order(self) -> tuple[int, int]:
        """Sort key in execution order: (layer, position of the kind inside the block)."""
        return self.layer, KINDS.index(self.kind)


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _text_config(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        return cfg.get_text_config()
    return cfg


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks (``model.model.layers``, ``model.transformer.h``, ...)."""
    for path in _LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    cfg = _text_config(model)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and n and len(module) == n:
            return module
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__}: none of {', '.join(_LAYER_PATHS)} is a ModuleList"
    )


def n_layers(model: nn.Module) -> int:
    """Number of decoder blocks."""
    return len(decoder_layers(model))


def d_model(model: nn.Module) -> int:
    """Width of the residual stream."""
    cfg = _text_config(model)
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    return int(model.get_input_embeddings().embedding_dim)  # type: ignore[operator]  # torch types attributes as Tensor | Module


def _child(block: nn.Module, names: Iterable[str], what: str) -> nn.Module:
    for name in names:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"cannot find the {what} module of {type(block).__name__}: none of {', '.join(names)}")


def attention_module(block: nn.Module) -> nn.Module:
    """The attention submodule of a decoder block."""
    return _child(block, _ATTN_NAMES, "attention")


def mlp_module(block: nn.Module) -> nn.Module:
    """The MLP submodule of a decoder block."""
    return _child(block, _MLP_NAMES, "MLP")


def _is_sandwich(block: nn.Module) -> bool:
    return all(isinstance(getattr(block, name, None), nn.Module) for name in _SANDWICH_NORMS)


def check_hook(model: nn.Module, hook: str | HookPoint) -> HookPoint:
    """Parse ``hook`` and check its layer exists in ``model``."""
    point = HookPoint.parse(hook)
    n = n_layers(model)
    if point.layer >= n:
        raise ValueError(f"hook point '{point}' is out of range: {type(model).__name__} has {n} layers (0..{n - 1})")
    return point


def check_sae_width(d_in: int, model: nn.Module, hook: str | HookPoint) -> None:
    """Error unless an SAE of input width ``d_in`` fits the activations of ``model`` at ``hook`` (width d_model)."""
    if d_in != d_model(model):
        raise ValueError(
            f"the SAE takes d_in={d_in} but the model's activations at '{hook}' have width "
            f"{d_model(model)}: wrong --model or --hook for this SAE?"
        )


def hook_module(model: nn.Module, hook: str | HookPoint) -> nn.Module:
    """The module whose output (input, for ``resid_pre``) is the activation at ``hook``."""
    point = check_hook(model, hook)
    block = decoder_layers(model)[point.layer]
    if point.kind in ("resid_pre", "resid_post"):
        return block
    if _is_sandwich(block):
        return getattr(block, _SANDWICH_NORMS[0] if point.kind == "attn_out" else _SANDWICH_NORMS[1])
    return attention_module(block) if point.kind == "attn_out" else mlp_module(block)


def first_output(value: Any) -> Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def replace_first_output(value: Any, new: Tensor) -> Any:
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    return new


def register_hook(
    model: nn.Module, point: HookPoint, fn: Callable[[Tensor], Tensor | None]
) -> torch.utils.hooks.RemovableHandle:
    """Register ``fn(act)`` at ``point``; a returned tensor replaces the activation, None leaves it."""
    module = hook_module(model, point)
    if point.kind == "resid_pre":

        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            in_args = bool(args)
            act = args[0] if in_args else kwargs["hidden_states"]
            new = fn(act)
            if new is None:
                return None
            if in_args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        new = fn(first_output(output))
        return None if new is None else replace_first_output(output, new)

    return module.register_forward_hook(post_hook)


class _StopForward(Exception):
    """Raised by a capture hook to end the forward pass once every requested activation is stored."""


def _run(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, kwargs: Mapping[str, Any]) -> None:
    kwargs = {"use_cache": False, **kwargs}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    model(input_ids=input_ids, **kwargs)


def capture_many(
    model: nn.Module,
    hooks: Iterable[str | HookPoint],
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    stop: bool = True,
    **forward_kwargs: Any,
) -> dict[Any, Tensor]:
    """Activations ``[B, T, d]`` at several hooks in one forward pass, keyed as given.

    With ``stop`` the forward pass ends right after the last needed activation is produced (later layers never run).
    Runs under ``torch.inference_mode``; the results are cloned outside it, so they are ordinary tensors (usable in
    autograd, e.g. as SAE training inputs).
    """
    keys = list(dict.fromkeys(hooks))
    if not keys:
        raise ValueError("capture_many needs at least one hook point")
    points = {key: check_hook(model, key) for key in keys}
    store: dict[Any, Tensor] = {}
    handles = []

    def make(key: Any) -> Callable[[Tensor], None]:
        def read(act: Tensor) -> None:
            store.setdefault(key, act)
            if stop and len(store) == len(keys):
                raise _StopForward

        return read

    try:
        for key, point in points.items():
            handles.append(register_hook(model, point, make(key)))
        with torch.inference_mode(), contextlib.suppress(_StopForward):
            _run(model, input_ids, attention_mask, forward_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    missing = [str(points[key]) for key in keys if key not in store]
    if missing:
        raise RuntimeError(f"hook point(s) {', '.join(missing)} never fired during the forward pass")
    return {key: store[key].clone() for key in keys}


def capture(
    model: nn.Module,
    hook: str | HookPoint,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    stop: bool = True,
    **forward_kwargs: Any,
) -> Tensor:
    """Activation ``[B, T, d]`` at ``hook`` for ``input_ids [B, T]``; with ``stop`` later layers are not run."""
    return capture_many(model, [hook], input_ids, attention_mask, stop, **forward_kwargs)[hook]


@contextlib.contextmanager
def edit(model: nn.Module, hook: str | HookPoint, fn: Callable[[Tensor], Tensor]) -> Iterator[HookPoint]:
    """Within the block, every forward pass replaces the activation ``act [B, T, d]`` at ``hook`` by ``fn(act)``.

    Works with ``model.generate`` and the KV cache (then ``T`` is 1 after the prompt). ``fn`` may return ``act``
    itself (possibly modified in place); its result must have ``act``'s shape and is cast to ``act``'s dtype. The
    hook is removed on exit, also on exceptions.
    """
    point = check_hook(model, hook)

    def replace(act: Tensor) -> Tensor:
        new = fn(act)
        if not isinstance(new, Tensor):
            raise TypeError(f"edit function for '{point}' must return a tensor, got {type(new).__name__}")
        if new.shape != act.shape:
            raise ValueError(f"edit function for '{point}' changed the shape {tuple(act.shape)} -> {tuple(new.shape)}")
        return new.to(dtype=act.dtype, device=act.device)

    handle = register_hook(model, point, replace)
    try:
        yield point
    finally:
        handle.remove()
