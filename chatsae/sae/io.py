"""Save and load SAEs in the SAELens directory format (``cfg.json`` + ``sae_weights.safetensors``
[+ ``sparsity.safetensors``]). Weights are never pickled; directories are written atomically.

``cfg.json`` holds the keys of SAELens 6 (``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``device``,
``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations``, ``metadata``, and ``k`` /
``rescale_acts_by_decoder_norm`` for TopK) so that ``sae_lens.SAE.load_from_disk`` reads it, plus chatsae's own full
config under ``chatsae`` (SAELens ignores unknown keys). ``metadata.sae_lens_version`` is set to ``6.0.0``, the
format version: without it SAELens takes the file for a pre-6 config and drops the nested metadata. In the SAELens
view ``metadata.hook_name`` is the TransformerLens name (``blocks.15.hook_resid_post``); the ``chatsae`` block keeps
chatsae's own (``resid_post.15``).

:func:`load_sae` also reads directories written by SAELens (6.x, and older configs with top-level metadata keys,
``activation_fn_kwargs.k`` or a ``log_threshold`` tensor); a TopK SAE saved with ``rescale_acts_by_decoder_norm``
has its decoder norms folded into the encoder on load, which leaves its outputs unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..core.constants import CHECKSUMS_FILE, SAE_CFG_FILE, SAE_SPARSITY_FILE, SAE_WEIGHTS_FILE
from ..core.utils import atomic_dir, file_digest, safe_name, safetensors_shapes
from . import sources
from .base import SAE, SAEConfig
from .foreign import refuse_saelens_architecture

CFG_FILE, WEIGHTS_FILE, SPARSITY_FILE = SAE_CFG_FILE, SAE_WEIGHTS_FILE, SAE_SPARSITY_FILE
"""blake2b of the weight files, written by :func:`save_sae` and verified by :func:`load_sae` when present."""
SAELENS_FORMAT_VERSION = "6.0.0"
_CHATSAE_HOOK = re.compile(r"^(resid_pre|resid_post|attn_out|mlp_out)\.(\d+)$")
# metadata keys that SAELens configs before 6.0 kept at the top level
_TOP_LEVEL_METADATA = (
    "model_name",
    "hook_name",
    "hook_point",
    "context_size",
    "prepend_bos",
    "dataset_path",
    "model_class_name",
    "hook_head_index",
    "exclude_special_tokens",
    "neuronpedia_id",
)


def _saelens_hook_name(name: Any) -> Any:
    """chatsae hook string ``resid_post.15`` -> TransformerLens ``blocks.15.hook_resid_post`` (anything else unchanged).

    Kept local (same rule as ``chatsae.models.HookPoint.saelens_name``): importing chatsae.models pulls in
    transformers, far too slow for saving an SAE."""
    m = _CHATSAE_HOOK.match(name) if isinstance(name, str) else None
    return f"blocks.{m.group(2)}.hook_{m.group(1)}" if m else name


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    """The ``cfg.json`` dictionary for ``sae``."""
    cfg = sae.cfg
    metadata = {**cfg.metadata, "sae_lens_version": SAELENS_FORMAT_VERSION}
    if "hook_name" in metadata:
        metadata["hook_name"] = _saelens_hook_name(metadata["hook_name"])
    d: dict[str, Any] = {
        "architecture": sae.saelens_architecture or cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
        "chatsae": cfg.to_dict(),
    }
    if cfg.architecture == "topk":
        d["k"] = cfg.k
        d["rescale_acts_by_decoder_norm"] = False
    return d


def save_sae(
    sae: SAE,
    path: str | Path,
    sparsity: torch.Tensor | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``sae`` to directory ``path`` (replaced atomically; see :func:`chatsae.utils.atomic_dir`: a non-empty
    directory chatsae did not write is refused unless ``overwrite``, and files chatsae did not write are kept).

    ``sparsity`` ``[d_sae]`` is the log10 firing frequency of each latent; ``extra`` maps file names to JSON-able
    objects written beside the weights (e.g. the training config). ``checksums.json`` holds the weight files' digests.
    """
    path = Path(path)
    with atomic_dir(path, overwrite=overwrite, kind="sae", option="SAE directory") as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in sae.saelens_state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(saelens_cfg(sae), indent=2))
        if sparsity is not None:
            save_file({"sparsity": sparsity.detach().cpu().float().contiguous()}, str(tmp / SPARSITY_FILE))
        for name, obj in (extra or {}).items():
            (tmp / safe_name(name, "extra file name")).write_text(json.dumps(obj, indent=2, default=str))
        digests = {f.name: file_digest(f) for f in (tmp / WEIGHTS_FILE, tmp / SPARSITY_FILE) if f.is_file()}
        (tmp / CHECKSUMS_FILE).write_text(json.dumps({"algorithm": "blake2b-128", "files": digests}, indent=2))
    return path


def verify_checksums(path: str | Path) -> None:
    """Compare the files listed in ``checksums.json`` with their digests (no file: nothing to check, e.g. SAELens)."""
    path = Path(path)
    f = path / CHECKSUMS_FILE
    if not f.is_file():
        return
    try:
        files = json.loads(f.read_text())["files"]
        items = [(str(name), str(digest)) for name, digest in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{f}: corrupt checksum file ({e})") from e
    for name, digest in items:
        target = path / safe_name(name, f"{f} entry")
        if target.is_file() and file_digest(target) != digest:
            raise ValueError(
                f"{target}: contents changed since chatsae wrote it (checksum mismatch with {f.name}); "
                "the file is corrupt or was edited"
            )


def read_raw_cfg(path: str | Path) -> dict[str, Any]:
    """The parsed ``cfg.json`` of an SAE directory, with clear errors."""
    cfg_path = Path(path) / CFG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no cfg.json here; is {path} an SAE directory?")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{cfg_path}: invalid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def read_cfg(path: str | Path) -> SAEConfig:
    """Parse ``cfg.json`` of a chatsae or SAELens SAE directory into an :class:`SAEConfig`."""
    cfg_path = Path(path) / CFG_FILE
    raw = read_raw_cfg(path)
    try:
        if "chatsae" in raw:
            return SAEConfig.from_dict(raw["chatsae"])
        return _cfg_from_saelens(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path}: {e}") from e


def _cfg_from_saelens(raw: dict[str, Any]) -> SAEConfig:
    for key in ("architecture", "d_in", "d_sae"):
        if key not in raw:
            raise ValueError(f"field {key!r} is missing")
    arch = raw["architecture"]
    refuse_saelens_architecture(arch)
    if raw.get("normalize_activations") not in ("none", None, False):
        raise ValueError(f"field 'normalize_activations' = {raw['normalize_activations']!r} is not supported")
    k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))
    if arch == "topk" and k is None:
        raise ValueError("field 'k' is missing for a topk SAE")
    metadata = {key: raw[key] for key in _TOP_LEVEL_METADATA if key in raw}
    metadata.update(raw.get("metadata") or {})
    if "hook_point" in metadata:
        metadata.setdefault("hook_name", metadata.pop("hook_point"))
    return SAEConfig(
        architecture=arch,
        d_in=int(raw["d_in"]),
        d_sae=int(raw["d_sae"]),
        k=int(k) if k is not None else SAEConfig.k,
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),  # SAELens's default, all architectures
        dtype=str(raw.get("dtype", "float32")).replace("torch.", ""),
        metadata=metadata,
    )


def load_sae(path: str | Path, device: str | torch.device = "cpu", hook: str | None = None) -> SAE:
    """Load an SAE in any layout :func:`chatsae.sae.sources.locate` detects: a directory written by chatsae or
    SAELens, an EleutherAI sparsify hookpoint folder, a dictionary_learning ``ae.pt`` folder, a Gemma Scope
    ``params.npz``, or a Hub id ``org/repo[/subfolder]``. ``hook`` (``resid_post.15``) sets or overrides
    ``cfg.metadata['hook_name']`` (foreign SAEs carry it only where their format says it)."""
    fmt, path = sources.locate(path)
    sae = load_saelens_dir(path) if fmt == sources.SAELENS else sources.load_foreign(fmt, path)
    return sources.set_hook(sae, hook).to(device)


def load_saelens_dir(path: str | Path) -> SAE:
    """Load an SAE directory written by chatsae (or by SAELens, for the four shared architectures)."""
    from . import create_sae  # chatsae.sae imports this module: resolved at call time

    path = Path(path)
    cfg = read_cfg(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights file missing")
    _check_sizes(cfg, safetensors_shapes(weights), weights)  # before anything is allocated from cfg.json's numbers
    sae = create_sae(cfg, seed=0)  # initial weights are overwritten below: drawn without touching the global RNG
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{weights}: not a readable safetensors file ({e})") from e
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{weights}: tensor {name!r} has {bad} non-finite values (NaN/inf); the SAE is unusable")
    try:
        if cfg.architecture == "topk" and read_raw_cfg(path).get("rescale_acts_by_decoder_norm"):
            state = _fold_decoder_norm(state)
        sae.load_saelens_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as e:
        raise ValueError(f"{weights}: does not match cfg.json ({e})") from e
    verify_checksums(path)  # last: a structural error above says more than "the bytes changed"
    return sae


def _check_sizes(cfg: SAEConfig, shapes: dict[str, tuple[int, ...]], weights: Path) -> None:
    """cfg.json's ``d_in``/``d_sae`` must be the shapes of ``W_enc`` ``[d_in, d_sae]`` and ``W_dec`` in the file."""
    for name, want in (("W_enc", (cfg.d_in, cfg.d_sae)), ("W_dec", (cfg.d_sae, cfg.d_in))):
        if name not in shapes:
            raise ValueError(f"{weights}: no tensor {name!r} (tensors: {', '.join(sorted(shapes)) or 'none'})")
        if shapes[name] != want:
            raise ValueError(
                f"{weights}: {name} has shape {list(shapes[name])}, but {CFG_FILE} says d_in = "
                f"{cfg.d_in}, d_sae = {cfg.d_sae} (expected {list(want)})"
            )


def _fold_decoder_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAELens TopK with ``rescale_acts_by_decoder_norm``: ``W_enc, b_enc *= ||W_dec,i||``, ``W_dec /= ||W_dec,i||``."""
    if not {"W_enc", "b_enc", "W_dec"} <= set(state):
        return state  # the shape check reports what is missing
    norms = state["W_dec"].norm(dim=-1).clamp_min(1e-8)
    return {
        **state,
        "W_enc": state["W_enc"] * norms,
        "b_enc": state["b_enc"] * norms,
        "W_dec": state["W_dec"] / norms[:, None],
    }


def load_sparsity(path: str | Path) -> torch.Tensor | None:
    """log10 firing frequencies ``[d_sae]`` if ``sparsity.safetensors`` exists, else None."""
    f = Path(path) / SPARSITY_FILE
    return load_file(str(f))["sparsity"] if f.is_file() else None
