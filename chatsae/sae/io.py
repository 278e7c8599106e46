"""Save and load SAEs in the SAELens directory format (``cfg.json`` + ``sae_weights.safetensors``
[+ ``sparsity.safetensors``]). Weights are never pickled; directories are written atomically.

``cfg.json`` holds the SAELens keys (``architecture``, ``d_in``, ``d_sae``, ``dtype``, ``device``,
``apply_b_dec_to_input``, ``normalize_activations``, ``metadata``, and ``k`` for TopK) so that
``sae_lens.SAE.load_from_disk`` reads it, plus chatsae's own full config under ``chatsae``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..utils import atomic_dir
from .base import SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"


def saelens_cfg(sae: SAE) -> dict[str, Any]:
    """The ``cfg.json`` dictionary for ``sae``."""
    cfg = sae.cfg
    d: dict[str, Any] = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": cfg.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": dict(cfg.metadata),
        "chatsae": cfg.to_dict(),
    }
    if cfg.architecture == "topk":
        d["k"] = cfg.k
    return d


def save_sae(
    sae: SAE, path: str | Path, sparsity: torch.Tensor | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``sae`` to directory ``path`` (replaced atomically).

    ``sparsity`` ``[d_sae]`` is the log10 firing frequency of each latent; ``extra`` maps file names to JSON-able
    objects written beside the weights (e.g. the training config).
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in sae.saelens_state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(saelens_cfg(sae), indent=2))
        if sparsity is not None:
            save_file({"sparsity": sparsity.detach().cpu().float().contiguous()}, str(tmp / SPARSITY_FILE))
        for name, obj in (extra or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, default=str))
    return path


def read_cfg(path: str | Path) -> SAEConfig:
    """Parse ``cfg.json`` of a chatsae or SAELens SAE directory into an :class:`SAEConfig`."""
    cfg_path = Path(path) / CFG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no cfg.json here; is {path} an SAE directory?")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: invalid JSON ({e})") from e
    if "chatsae" in raw:
        return SAEConfig.from_dict(raw["chatsae"])
    for key in ("architecture", "d_in", "d_sae"):
        if key not in raw:
            raise ValueError(f"{cfg_path}: field {key!r} is missing")
    arch = raw["architecture"]
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{cfg_path}: normalize_activations={raw['normalize_activations']!r} is not supported"
        )
    return SAEConfig(
        architecture=arch,
        d_in=int(raw["d_in"]),
        d_sae=int(raw["d_sae"]),
        k=int(raw.get("k", 32)),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", arch != "jumprelu")),
        dtype=str(raw.get("dtype", "float32")).replace("torch.", ""),
        metadata=dict(raw.get("metadata") or {}),
    )


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE directory written by chatsae (or by SAELens, for the four shared architectures)."""
    from . import create_sae

    path = Path(path)
    cfg = read_cfg(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights file missing")
    sae = create_sae(cfg)
    try:
        sae.load_saelens_state_dict(load_file(str(weights)))
    except (KeyError, RuntimeError, ValueError) as e:
        raise ValueError(f"{weights}: does not match cfg.json ({e})") from e
    return sae.to(device)


def load_sparsity(path: str | Path) -> torch.Tensor | None:
    """log10 firing frequencies ``[d_sae]`` if ``sparsity.safetensors`` exists, else None."""
    f = Path(path) / SPARSITY_FILE
    return load_file(str(f))["sparsity"] if f.is_file() else None
