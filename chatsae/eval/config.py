"""``EvalConfig``: what to evaluate on and how; unset fields are filled from the SAE's metadata."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..activations.pipeline import default_data_path
from ..core.config import validate
from ..data.formats import FORMAT_NAMES
from ..data.methods import BLOCK_CONTEXT_SIZE, FAST_MAX_LENGTH, METHOD_NAMES


@dataclass
class EvalConfig:
    """How an SAE is evaluated (metrics in raw activation units; see docs/metrics.md)."""

    model: str | None = None
    """Model: 'embedded', a hub id, a local directory or a .gguf file. None = the SAE's metadata model_name, else
    'embedded'."""
    data: str | None = None
    """Evaluation records (chat JSON/JSONL, ShareGPT, Alpaca, Q/A, plain text; 'default' = chatsae's own chat data).
    None = the SAE's metadata eval_data, else its training data when its metadata records a holdout."""
    data_format: str = "auto"
    """Record format: auto | messages | sharegpt | alpaca | qa | text."""
    method: str | None = None
    """How sequences are built: fast (one sample per sequence) | bt-f (chat blocks) | bt-p (plain-text blocks).
    None = the SAE's training method. To compare SAEs as the FAST paper does, evaluate all of them with fast."""
    hook: str | None = None
    """Hook point, e.g. resid_post.15. None = the SAE's metadata hook_name."""
    holdout: float | None = None
    """Evaluate only on held-out records: a count, or a fraction (< 1), drawn with holdout_seed as
    chatsae.data.split_records does. None = the SAE's metadata holdout when data is its training data, else all."""
    holdout_seed: int | None = None
    """Seed of the held-out split. None = the SAE's metadata holdout_seed, else 0."""
    max_samples: int | None = 1000
    """Records evaluated at most (after the held-out split). FAST paper: 5000 held-out dialogues. None = all."""
    max_tokens: int | None = None
    """Token budget: sequences are taken until this many tokens (the last one truncated). None = no limit."""
    max_length: int | None = None
    """FAST: truncate samples at this many tokens. None = the SAE's metadata max_length, else 8192."""
    context_size: int | None = None
    """BT(F)/BT(P): block length. None = the SAE's metadata context_size, else 2048."""
    batch_tokens: int = 4096
    """Tokens per forward pass (padding included); bounds memory, logits take batch_tokens x vocab floats."""
    max_batch_size: int = 64
    """Sequences per forward pass at most."""
    lm_loss: bool = True
    """Run the clean, spliced and zero-ablated forward passes for delta LM loss, KL and CE recovered."""
    zero_ablation: bool = True
    """Run the zero-ablated pass (needed for CE recovered only: delta LM loss and KL do not use it); off saves one
    restarted pass per batch, and CE recovered is then null."""
    restart: bool = True
    """Run the spliced and zero-ablated passes from the hook layer on, from the clean pass's hidden state (the
    blocks below the hook are identical); False = full forward passes. Same results either way."""
    share_prefix: bool = True
    """With restart: run the tokens that open every sequence of a batch (a chat template's system prompt) once per
    pass, not once per sequence (families of chatsae.models.prefix, transformers >= 5). Same results to rounding."""
    splice_first_position: bool | None = None
    """Splice (and zero-ablate) position 0 too. None = not when the SAE was trained without position 0 (metadata
    exclude_first_position), else yes. Reconstruction metrics always cover position 0 (see the *_no_pos0 subsets)."""
    dense_threshold: float = 0.1
    """A latent is dense if it fires on more than this fraction of tokens."""
    device: str = "auto"
    """Device for the model and SAE: auto | cpu | cuda | cuda:N | mps."""
    dtype: str = "float32"
    """Model dtype: float32 | bfloat16 | float16 (the SAE runs in its own dtype)."""
    output: str | None = None
    """JSON file to write. None = eval.json inside the SAE directory (CLI), nothing (library)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:

        validate(
            self,
            positive=("max_samples", "max_tokens", "max_length", "context_size", "batch_tokens", "max_batch_size"),
            non_negative=("holdout",),
            seeds=("holdout_seed",),
            ranges={"dense_threshold": "[0,1]"},
            choices={"data_format": FORMAT_NAMES},
            dtypes=("dtype",),
            devices=("device",),
            paths=("data", "output"),
        )
        if self.method is not None:
            validate(self, choices={"method": METHOD_NAMES})


def _same_file(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    try:
        return Path(str(a)).resolve() == Path(str(b)).resolve()
    except OSError:
        return str(a) == str(b)


def resolve_config(cfg: EvalConfig, metadata: dict[str, Any], data_from_metadata: bool = False) -> EvalConfig:
    """Fill the unset (None) fields of ``cfg`` from an SAE's ``metadata`` and the documented defaults.

    Metadata keys read: ``model_name``, ``method``, ``hook_name``, ``max_length``, ``context_size``,
    ``exclude_first_position``, and with ``data_from_metadata`` (the CLI, which reads the records itself) also
    ``eval_data``, ``data`` (training data), ``holdout`` and ``holdout_seed``: the training holdout is reused only
    when the evaluation data is the SAE's training data. :func:`~chatsae.eval.evaluate` is given its records, so
    there only an explicit ``cfg.holdout`` splits them.
    """
    meta = metadata or {}
    data, holdout, seed = cfg.data, cfg.holdout, cfg.holdout_seed
    if data_from_metadata:
        if data is None:
            data = meta.get("eval_data")
        if data is None and meta.get("holdout") and meta.get("data"):
            data = meta["data"]  # the held-out part of the training data
        if data == "default":
            data = str(default_data_path())
        if holdout is None and meta.get("holdout") and _same_file(data, meta.get("data")):
            holdout = float(meta["holdout"])
        if seed is None:
            seed = int(meta.get("holdout_seed", 0))
    method = cfg.method or meta.get("method") or "fast"
    if method not in METHOD_NAMES:
        raise ValueError(f"the SAE's metadata method {method!r} is not one of {', '.join(METHOD_NAMES)}; pass --method")
    splice0 = cfg.splice_first_position
    if splice0 is None:
        splice0 = not bool(meta.get("exclude_first_position", False))
    return dataclasses.replace(
        cfg,
        model=cfg.model or meta.get("model_name") or "embedded",
        data=data,
        method=method,
        hook=cfg.hook or meta.get("hook_name"),
        holdout=holdout,
        holdout_seed=0 if seed is None else seed,
        max_length=cfg.max_length or int(meta.get("max_length") or FAST_MAX_LENGTH),
        context_size=cfg.context_size or int(meta.get("context_size") or BLOCK_CONTEXT_SIZE),
        splice_first_position=splice0,
    )
