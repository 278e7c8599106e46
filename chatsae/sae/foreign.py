"""Readers for SAEs saved by other libraries, each mapped exactly onto a chatsae architecture.

- EleutherAI sparsify (``cfg.json`` + ``sae.safetensors``): ``f = TopK(ReLU(W (x - b_dec) + b))``,
  ``x_hat = f @ W_dec + b_dec`` -> ``topk`` (``encoder.weight`` ``[d_sae, d_in]`` is transposed into ``W_enc``).
  Refused: transcoders, skip connections (``W_skip``) and the ``groupmax`` activation.
- dictionary_learning (``ae.pt`` state dict + ``config.json`` naming ``trainer.dict_class``): ``AutoEncoder`` and
  ``AutoEncoderNew`` -> ``standard``; ``GatedAutoEncoder`` -> ``gated``; ``AutoEncoderTopK`` -> ``topk``;
  ``JumpReluAutoEncoder`` -> ``jumprelu``; ``BatchTopKSAE`` and ``MatryoshkaBatchTopKSAE`` (inference: ``ReLU(z)``
  kept where it exceeds one scalar threshold) -> ``jumprelu`` with that threshold for every latent.
- Gemma Scope (``params.npz``: ``W_enc [d_in, d_sae]``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``) ->
  ``jumprelu`` without ``b_dec`` subtraction.

Thresholds of ``ReLU(z) * (z > t)`` rules are stored as ``max(t, 0)``: chatsae's ``z * (z > theta)`` then gives the
same outputs for every ``t`` (a negative ``t``, e.g. dictionary_learning's ``-1`` before its threshold is set, is a
plain ReLU). Each reader returns a :class:`Foreign` (config + tensors under chatsae's names); :func:`build` makes the
SAE. Errors are one line naming the file and what was expected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from ..core.utils import safetensors_shapes
from .base import SAE, SAEConfig

HOOK_KINDS = ("resid_pre", "resid_post", "attn_out", "mlp_out")
_SPARSIFY_HOOK = re.compile(r"^(?:.*\.)?(?:layers|h|blocks)\.(\d+)(?:\.(self_attn|attn|attention|mlp|feed_forward))?$")
_SPARSIFY_KIND = {None: "resid_post", "self_attn": "attn_out", "attn": "attn_out", "attention": "attn_out"}
_DICTLEARN_HOOK = re.compile(r"^(resid_pre|resid_post|attn_out|mlp_out)_layer_(\d+)$")
_GEMMA_SCOPE = re.compile(r"^gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att|transcoders)(?:-canonical)?$")
DICTLEARN_CLASSES = (
    "AutoEncoder",
    "AutoEncoderNew",
    "GatedAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "JumpReluAutoEncoder",
    "MatryoshkaBatchTopKSAE",
)


@dataclass
class Foreign:
    """A foreign SAE translated to chatsae: its config and its tensors under chatsae's (SAELens) names."""

    cfg: SAEConfig
    state: dict[str, Tensor]
    weights: Path
    """The weights file it came from (named in errors)."""


# ---- small readers with one-line errors -------------------------------------------------------------------------
def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path`` (``what`` says which file the format expects)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {what}")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: invalid JSON ({e}); {what}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}; {what}")
    return raw


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Tensors of a ``.safetensors`` file; the header is checked against the file size first (truncation)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file missing")
    safetensors_shapes(path)
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e


def read_torch_state(path: Path) -> dict[str, Tensor]:
    """A ``torch.save``-d state dict, read with ``weights_only=True`` (no code in the file is run)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, ...: torch raises many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable PyTorch state dict (truncated, or not torch.save's: {msg})") from e
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (tensor name -> tensor), got {type(state).__name__}")
    return {str(k): v for k, v in state.items()}


def read_npz(path: Path) -> dict[str, Tensor]:
    """Arrays of an ``.npz`` file as tensors (pickled objects refused)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file missing")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError, OSError ...
        raise ValueError(f"{path}: not a readable .npz file (truncated or not numpy's format: {e})") from e


def expect_shapes(state: dict[str, Any], want: dict[str, tuple[int, ...]], path: Path, why: str) -> None:
    """Every tensor of ``want`` must be in ``state`` (tensors or shape tuples) with that shape."""
    for name, shape in want.items():
        if name not in state:
            found = ", ".join(sorted(state)) or "none"
            raise ValueError(f"{path}: no tensor {name!r} (expected {', '.join(want)}; found {found})")
        got = tuple(state[name].shape) if isinstance(state[name], Tensor) else tuple(state[name])
        if got != shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {list(got)}, expected {list(shape)} ({why})")


def _int(raw: dict[str, Any], key: str, path: Path) -> int:
    v = raw.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{path}: field {key!r} must be a positive integer, got {v!r}")
    return v


def _dtype(t: Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def make_cfg(path: Path, **kw: Any) -> SAEConfig:
    """``SAEConfig(**kw)`` with its validation errors naming ``path``."""
    try:
        return SAEConfig(**kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


def relu_threshold(t: Tensor, d_sae: int) -> Tensor:
    """JumpReLU theta ``[d_sae]`` equivalent to the rule ``ReLU(z) * (z > t)`` (``t`` scalar or ``[d_sae]``)."""
    return t.detach().float().clamp_min(0.0).expand(d_sae).clone()


# ---- EleutherAI sparsify ---------------------------------------------------------------------------------------
def sparsify_hook(hookpoint: str) -> str | None:
    """sparsify hookpoint (module path under the base model) -> chatsae hook: ``layers.15`` -> ``resid_post.15``,
    ``layers.15.mlp`` -> ``mlp_out.15``, ``layers.15.self_attn`` -> ``attn_out.15``; anything else None."""
    m = _SPARSIFY_HOOK.match(hookpoint)
    if not m:
        return None
    return f"{_SPARSIFY_KIND.get(m.group(2), 'mlp_out')}.{m.group(1)}"


def read_sparsify(d: Path) -> Foreign:
    cfg_file, weights = d / "cfg.json", d / "sae.safetensors"
    raw = read_json(cfg_file, "a sparsify SAE folder holds cfg.json and sae.safetensors")
    if raw.get("transcode"):
        raise ValueError(
            f"{cfg_file}: a sparsify transcoder (transcode: true) predicts a module's output from its input; "
            "chatsae SAEs reconstruct their input, so it cannot be loaded"
        )
    if raw.get("skip_connection"):
        raise ValueError(
            f"{cfg_file}: skip_connection: true (x_hat += x @ W_skip^T) has no counterpart in chatsae's SAEs"
        )
    for key in ("signed",):  # later sparsify options that change the encoder: refused rather than misread
        if raw.get(key):
            raise ValueError(f"{cfg_file}: option {key!r} = {raw[key]!r} is not supported (only plain TopK SAEs)")
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise ValueError(f"{cfg_file}: activation {activation!r} is not supported (only 'topk' maps to chatsae)")
    d_in, k = _int(raw, "d_in", cfg_file), _int(raw, "k", cfg_file)
    d_sae = raw.get("num_latents") or d_in * _int(raw, "expansion_factor", cfg_file)
    shapes = safetensors_shapes(weights) if weights.is_file() else None
    if shapes is None:
        raise FileNotFoundError(f"{weights}: weights file missing (a sparsify SAE folder holds cfg.json + it)")
    if "W_skip" in shapes:
        raise ValueError(f"{weights}: holds a skip connection W_skip, which chatsae's SAEs cannot represent")
    why = f"cfg.json: d_in = {d_in}, {d_sae} latents"
    want = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    expect_shapes(shapes, want, weights, why)
    t = read_safetensors(weights)
    state = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"], "b_dec": t["b_dec"]}
    hookpoint = d.name
    meta: dict[str, Any] = {"source_format": "sparsify", "source_path": str(d), "sparsify_hookpoint": hookpoint}
    if hook := sparsify_hook(hookpoint):
        meta["hook_name"] = hook
    cfg = make_cfg(
        cfg_file,
        architecture="topk",
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        apply_b_dec_to_input=True,
        decoder_unit_norm=bool(raw.get("normalize_decoder", True)),
        dtype=_dtype(t["encoder.weight"]),
        metadata=meta,
    )
    return Foreign(cfg, state, weights)


# ---- dictionary_learning ----------------------------------------------------------------------------------------
def dictlearn_hook(trainer: dict[str, Any], d: Path) -> str | None:
    """``submodule_name`` like ``resid_post_layer_8`` (the library's naming), or such a folder name in the path."""
    for name in (trainer.get("submodule_name"), *(p.name for p in (d, *d.parents))):
        m = _DICTLEARN_HOOK.match(str(name or ""))
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


def read_dictionary_learning(d: Path) -> Foreign:
    cfg_file, weights = d / "config.json", d / "ae.pt"
    raw = read_json(cfg_file, "dictionary_learning saves it beside ae.pt; its trainer.dict_class names the class")
    trainer = raw.get("trainer")
    if not isinstance(trainer, dict) or "dict_class" not in trainer:
        raise ValueError(f"{cfg_file}: no trainer.dict_class (expected dictionary_learning's config.json)")
    cls = trainer["dict_class"]
    if cls not in DICTLEARN_CLASSES:
        raise ValueError(f"{cfg_file}: dict_class {cls!r} is not supported (supported: {', '.join(DICTLEARN_CLASSES)})")
    t = read_torch_state(weights)
    d_in, d_sae = _int(trainer, "activation_dim", cfg_file), _int(trainer, "dict_size", cfg_file)
    why = f"config.json: activation_dim = {d_in}, dict_size = {d_sae}"
    kw: dict[str, Any] = {}
    if cls in ("AutoEncoder", "AutoEncoderNew"):
        bias = "bias" if cls == "AutoEncoder" else "decoder.bias"
        want = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "decoder.weight": (d_in, d_sae)}
        want[bias] = (d_in,)
        expect_shapes(t, want, weights, why)
        state = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["decoder.weight"].T}
        state["b_dec"] = t[bias]
        kw = {"architecture": "standard", "apply_b_dec_to_input": cls == "AutoEncoder"}
    elif cls == "GatedAutoEncoder":
        vec = {n: (d_sae,) for n in ("gate_bias", "mag_bias", "r_mag")}
        want = {"encoder.weight": (d_sae, d_in), **vec, "decoder.weight": (d_in, d_sae), "decoder_bias": (d_in,)}
        expect_shapes(t, want, weights, why)
        state = {"W_enc": t["encoder.weight"].T, "W_dec": t["decoder.weight"].T, "b_dec": t["decoder_bias"]}
        state.update(b_gate=t["gate_bias"], b_mag=t["mag_bias"], r_mag=t["r_mag"])
        kw = {"architecture": "gated", "apply_b_dec_to_input": True}
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        want = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "decoder.weight": (d_in, d_sae)}
        expect_shapes(t, {**want, "b_dec": (d_in,), "k": (), "threshold": ()}, weights, why)
        state = {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["decoder.weight"].T}
        state["b_dec"] = t["b_dec"]
        kw = _batch_topk_kw(cls, t, trainer, state, d_sae, weights)
    elif cls == "MatryoshkaBatchTopKSAE":
        want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        expect_shapes(t, {**want, "k": (), "threshold": ()}, weights, why)
        if "group_sizes" in t and int(t["group_sizes"].sum()) != d_sae:
            raise ValueError(f"{weights}: group_sizes sum to {int(t['group_sizes'].sum())}, expected {d_sae} ({why})")
        state = {n: t[n] for n in want}
        kw = _batch_topk_kw(cls, t, trainer, state, d_sae, weights)
    else:  # JumpReluAutoEncoder: W_enc [d_in, d_sae], ReLU(z * (z > threshold)), no b_dec subtraction
        want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        expect_shapes(t, {**want, "threshold": (d_sae,)}, weights, why)
        state = {n: t[n] for n in want}
        state["threshold"] = relu_threshold(t["threshold"], d_sae)
        kw = {"architecture": "jumprelu", "apply_b_dec_to_input": False}
    meta: dict[str, Any] = {"source_format": "dictionary_learning", "source_path": str(d), "dict_class": cls}
    if isinstance(trainer.get("lm_name"), str):
        meta["model_name"] = trainer["lm_name"]
    if hook := dictlearn_hook(trainer, d):
        meta["hook_name"] = hook
    if "k" in t and kw["architecture"] == "jumprelu":
        meta["batch_topk_k"] = int(t["k"])  # the training k: about the mean L0 the threshold was set for
    for key in ("layer", "submodule_name"):
        if trainer.get(key) is not None:
            meta[f"dictionary_learning_{key}"] = trainer[key]
    dtype = _dtype(state["W_enc"])
    return Foreign(make_cfg(cfg_file, d_in=d_in, d_sae=d_sae, dtype=dtype, metadata=meta, **kw), state, weights)


def _batch_topk_kw(
    cls: str, t: dict[str, Tensor], trainer: dict[str, Any], state: dict[str, Tensor], d_sae: int, weights: Path
) -> dict[str, Any]:
    """k checked against config.json; TopK keeps its k, (Matryoshka) BatchTopK becomes a thresholded JumpReLU."""
    k = int(t["k"])
    if trainer.get("k") is not None and int(trainer["k"]) != k:
        raise ValueError(f"{weights}: buffer k = {k}, but config.json says k = {trainer['k']}")
    if cls == "AutoEncoderTopK":  # its forward uses the per-token top k (the threshold is only an option)
        return {"architecture": "topk", "k": k, "apply_b_dec_to_input": True}
    state["threshold"] = relu_threshold(t["threshold"], d_sae)
    return {"architecture": "jumprelu", "apply_b_dec_to_input": True}


# ---- Gemma Scope ------------------------------------------------------------------------------------------------
def gemma_scope_names(path: Path) -> tuple[str | None, str | None]:
    """(chatsae hook, model name) from a Gemma Scope path ``.../gemma-scope-2b-pt-res/layer_12/width_16k/...``."""
    layer = next((p.name[6:] for p in (path, *path.parents) if re.fullmatch(r"layer_\d+", p.name)), None)
    for p in (path, *path.parents):
        m = _GEMMA_SCOPE.match(p.name.split("models--google--")[-1])
        if m:
            size, variant, site = m.groups()
            if site == "transcoders":
                raise ValueError(f"{path}: a Gemma Scope transcoder (MLP input -> output) is not an SAE chatsae loads")
            model = f"google/gemma-2-{size}" + ("-it" if variant == "it" else "")
            kind = {"res": "resid_post", "mlp": "mlp_out"}.get(site)  # att: the attention's z (per head), no hook
            return (f"{kind}.{layer}" if kind and layer else None), model
    return None, None


def read_gemma_scope(npz: Path) -> Foreign:
    t = read_npz(npz)
    if "W_enc" not in t or t["W_enc"].ndim != 2:
        raise ValueError(f"{npz}: no 2-d 'W_enc' (Gemma Scope's params.npz has W_enc, W_dec, b_enc, b_dec, threshold)")
    d_in, d_sae = t["W_enc"].shape
    want = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    expect_shapes(t, want, npz, f"W_enc is [{d_in}, {d_sae}]")
    state = {n: t[n] for n in want}
    state["threshold"] = relu_threshold(t["threshold"], d_sae)
    hook, model = gemma_scope_names(npz.parent)
    meta: dict[str, Any] = {"source_format": "gemma_scope", "source_path": str(npz)}
    if hook:
        meta["hook_name"] = hook
    if model:
        meta["model_name"] = model
    cfg = make_cfg(
        npz, architecture="jumprelu", d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False, dtype="float32", metadata=meta
    )
    return Foreign(cfg, {n: v.float() for n, v in state.items()}, npz)


# ---- SAELens architectures chatsae does not have ----------------------------------------------------------------
SAELENS_REFUSED = {
    "abstopk": "keeps the k pre-activations largest in magnitude with their sign (chatsae's TopK keeps the k "
    "largest and applies ReLU)",
    "matching_pursuit": "encodes by iterative matching pursuit",
    "temporal": "attends over earlier positions of the sequence",
    "batchtopk": "is a SAELens training checkpoint; SAELens saves the inference SAE as jumprelu, which chatsae reads",
    "matryoshka_batchtopk": "is a SAELens training checkpoint; SAELens saves the inference SAE as jumprelu, which "
    "chatsae reads",
}
for _name in ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"):
    SAELENS_REFUSED[_name] = "is a transcoder (it predicts a module's output from its input), not an SAE"


def refuse_saelens_architecture(arch: Any) -> None:
    """A ValueError saying why chatsae cannot represent SAELens architecture ``arch`` (nothing for others)."""
    if isinstance(arch, str) and arch in SAELENS_REFUSED:
        raise ValueError(f"architecture {arch!r} {SAELENS_REFUSED[arch]}; chatsae cannot load it")


# ---- building ---------------------------------------------------------------------------------------------------
def build(f: Foreign) -> SAE:
    """The chatsae SAE holding ``f``'s tensors (non-finite or mismatched tensors: ValueError naming the file)."""
    from . import create_sae  # chatsae.sae imports this module (through io): resolved at call time

    for name, v in f.state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise ValueError(f"{f.weights}: tensor {name!r} has {bad} non-finite values (NaN/inf); the SAE is unusable")
    sae = create_sae(f.cfg, seed=0)  # initial weights are overwritten: drawn without touching the global RNG
    try:
        sae.load_saelens_state_dict({n: v.contiguous() for n, v in f.state.items()})
    except (KeyError, RuntimeError, ValueError) as e:
        raise ValueError(f"{f.weights}: {e}") from e
    return sae
