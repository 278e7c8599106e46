"""Models: loading causal LMs (hub / local / GGUF / the embedded SmolLM2) and hook points for reading and editing."""

from .hooks import (
    KINDS,
    HookPoint,
    attention_module,
    capture,
    capture_many,
    check_hook,
    d_model,
    decoder_layers,
    edit,
    hook_module,
    mlp_module,
    n_layers,
)
from .loading import (
    EMBEDDED,
    embedded_gguf,
    has_chat_template,
    load_model,
    load_tokenizer,
    model_info,
    resolve_device,
    resolve_source,
)

__all__ = [
    "EMBEDDED",
    "KINDS",
    "HookPoint",
    "attention_module",
    "capture",
    "capture_many",
    "check_hook",
    "d_model",
    "decoder_layers",
    "edit",
    "embedded_gguf",
    "has_chat_template",
    "hook_module",
    "load_model",
    "load_tokenizer",
    "mlp_module",
    "model_info",
    "n_layers",
    "resolve_device",
    "resolve_source",
]
