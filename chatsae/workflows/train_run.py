"""One training run, written once: activation source (synthetic, saved activations, or harvested from a model) ->
SAE -> :class:`~chatsae.train.Trainer` -> optional held-out evaluation.

``chatsae train`` is a thin wrapper around :func:`train_run`, and the studies (``compare``, ``sweep``) train each of
their SAEs with it; distribution, streaming and several SAEs per run belong here.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..activations import SyntheticSource, TensorSource, feature_recovery
from ..activations.cache import CacheSource
from ..activations.harvest import HarvestOptions
from ..activations.pipeline import (
    DataConfig,
    harvest,
    load_data_and_model,
    resolve_hooks,
    resolved_model_dtype,
    sequences_for,
)
from ..activations.streaming import StreamingSource
from ..core import distributed
from ..core.config import to_dict, validate
from ..core.constants import CHECKPOINT_STATE_FILE, CHECKPOINTS_DIR, EVAL_FILE, TRAINING_SUMMARY_FILE
from ..core.devices import set_tf32
from ..core.distributed import world_size
from ..core.locking import DirLock, claim_dir
from ..core.utils import atomic_file
from ..eval import EvalConfig, evaluate
from ..models import d_model
from ..sae import SAEConfig, create_sae, load_sae
from ..train.checkpoints import check_fresh_run
from ..train.config import TrainConfig
from ..train.init import MAX_FVU
from ..train.trainer import Trainer
from .sae_variants import parse_saes


@dataclass
class RunConfig:
    """Where the run goes and what it reads."""

    out_dir: str | None = None
    """Output directory; default runs/<model>_<hook>_<method>_<arch>."""
    activations: str | None = None
    """Train on saved activations instead of a model: an activation cache directory, a tensor file
    (.safetensors/.pt/.npy, [N, d_in]) or 'synthetic' (ground-truth sparse features; see --synthetic-*)."""
    expansion_factor: int = 8
    """d_sae = expansion_factor x d_in when --d-sae/--width is not given (FAST: 8 or 16)."""
    resume: bool = False
    """Continue the run in --out-dir from its last checkpoint (and an unfinished harvest) exactly where it stopped."""
    overwrite: bool = False
    """Start afresh in an --out-dir that holds an earlier run (its checkpoints, metrics log and SAE are removed; other
    files are kept), or write into a non-empty directory chatsae did not make."""
    evaluate: bool = True
    """After training on a model, evaluate on the held-out records and print the metrics table."""
    eval_max_samples: int = 50
    """Held-out samples used by that evaluation."""
    synthetic_features: int = 0
    """--activations synthetic: number of true features (0 = 2 x d_in)."""
    synthetic_active: float = 4.0
    """--activations synthetic: mean number of active features per vector."""
    saes: str = ""
    """Several SAEs from the same activations in one command, comma-separated, each ARCH[:FIELD=VALUE...] with SAE or
    training options, e.g. 'jumprelu:sparsity_coef=0.001,jumprelu:sparsity_coef=0.004,topk:k=32'; each trains in
    OUT_DIR/<name> (OUT_DIR/<hook>/<name> with --hooks), name = the architecture and options, or name=...; other
    options apply to every entry, and options left at --arch's defaults take the entry architecture's."""
    distribute_saes: bool = False
    """Under torchrun with several SAEs (--hooks / --saes): after the shared harvest each rank trains its own SAEs
    alone (SAE i on rank i mod the number of ranks), instead of every SAE data-parallel on all ranks in turn."""

    def __post_init__(self) -> None:
        validate(
            self,
            positive=("expansion_factor", "eval_max_samples", "synthetic_active"),
            non_negative=("synthetic_features",),
            paths=("out_dir", "activations"),
        )
        if self.saes:
            parse_saes(self.saes)  # a bad entry is an error before anything runs


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class RunSpec:
    """Everything one training run needs. ``data`` and ``harvest`` (a ``DataConfig`` and ``HarvestOptions``;
    defaults when None) matter only when harvesting from a model (``run.activations`` None)."""

    run: RunConfig = field(default_factory=RunConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    """Architecture and options; ``d_in`` is taken from the activations."""
    train: TrainConfig = field(default_factory=TrainConfig)
    data: Any = None
    harvest: Any = None
    d_sae: int | None = None
    """Number of latents; None = ``run.expansion_factor x d_in``."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Provenance added to the SAE's metadata (over what the source tells)."""
    extra_config: dict[str, Any] = field(default_factory=dict)
    """Extra sections saved in the run config (config.json, checkpoints), e.g. a study's settings."""
    model_and_tokenizer: tuple[Any, Any] | None = None
    """An already loaded model for the harvest (default: load ``data.model``)."""
    shared_stream: Any = None
    """``--cache none``: a :class:`~chatsae.activations.streaming.SharedStream` (of that model) to read the hook's
    vectors from, shared with other SAEs, instead of streaming a harvest of this run's own."""
    report: Callable[[str], None] = _stderr

    def __post_init__(self) -> None:

        self.data = DataConfig() if self.data is None else self.data
        self.harvest = HarvestOptions() if self.harvest is None else self.harvest
        check_ignored(self.run, self.data)


def check_ignored(run: RunConfig, data: Any) -> None:
    """Refuse model options that saved or synthetic activations (``--activations``) would silently ignore."""
    if not run.activations:
        return
    what = "synthetic activations" if run.activations == "synthetic" else f"saved activations ({run.activations})"
    if data.hooks:
        raise ValueError(
            f"--hooks does not apply to --activations: {what} come from no model hook; drop --hooks, or drop "
            "--activations to harvest those hooks from a model"
        )
    if data.cache == "none":
        raise ValueError(
            f"--cache none does not apply to --activations: {what} are read, not harvested; drop --cache none"
        )


class RunResult(NamedTuple):
    sae_dir: Path | None
    """The trained SAE (None on ranks other than 0)."""
    summary: dict[str, Any]
    """The trainer's summary (final metrics and run facts)."""
    out_dir: Path
    rows: dict[str, str]
    """Result rows beyond training: true-feature recovery (synthetic) and the held-out evaluation metrics."""
    context: dict[str, Any]
    """From a harvest: model, tokenizer, hook, held-out records (empty for saved activations)."""


class _Source(NamedTuple):
    source: Any
    metadata: dict[str, Any]
    context: dict[str, Any]


def hook_hint(data: Any) -> str:
    """The hook a data config asks for, before the model is loaded (``mid`` = the default middle layer)."""
    if data.hooks:
        return "+".join(t.strip() for t in data.hooks.split(",") if t.strip())
    return data.hook or (f"resid_post.{data.layer}" if data.layer is not None else "mid")


def default_out_dir(spec: RunSpec) -> Path:
    """``--out-dir`` if given, else ``runs/<model>_<hook>_<method>_<arch>`` (or ``runs/<file>_<arch>``)."""
    run, arch = spec.run, spec.sae.architecture
    if run.out_dir:
        return Path(run.out_dir)
    if run.activations == "synthetic":
        return Path("runs") / f"synthetic_synthetic_synthetic_{arch}"
    if run.activations:
        return Path("runs") / f"{Path(run.activations).stem}_{arch}"
    model = Path(spec.data.model).name.replace(".gguf", "") or "model"
    return Path("runs") / f"{model}_{hook_hint(spec.data)}_{spec.data.method}_{arch}"


def _make_source(spec: RunSpec, out_dir: Path) -> _Source:
    """The activation source of ``spec`` (harvesting into ``out_dir`` when training on a model)."""

    run, tc, data = spec.run, spec.train, spec.data
    if run.activations == "synthetic":
        d_in = spec.sae.d_in
        n_features = run.synthetic_features or 2 * d_in
        source: Any = SyntheticSource(
            d_in=d_in, n_features=n_features, batch_size=tc.batch_size, mean_active=run.synthetic_active, seed=tc.seed
        )
        return _Source(source, {"data": "synthetic", "hook_name": "synthetic"}, {})
    if run.activations:
        path = Path(run.activations)
        if path.is_dir():
            source = CacheSource(path, tc.batch_size, buffer_tokens=data.buffer_tokens, seed=tc.seed)
            return _Source(source, _cache_meta(source.cache.manifest, path), {})
        return _Source(TensorSource.from_file(path, tc.batch_size, seed=tc.seed), {"activations": str(path)}, {})

    spec.report(
        f"chatsae train: model {data.model} ({resolved_model_dtype(data)}), data {data.data_path}, "
        f"method {data.method} -> {out_dir}"
    )
    if data.cache == "none":
        return _streaming_source(spec, out_dir)
    cache_dir, manifest, stats, context = harvest(data, spec.harvest, out_dir, **harvest_kwargs(spec))
    if stats.sequences:
        spec.report(
            f"harvested {stats.tokens_kept:,} vectors from {stats.sequences:,} sequences in "
            f"{stats.seconds:.0f}s ({stats.as_dict()['tokens_per_s']:,.0f} tok/s, padding "
            f"{100 * stats.padding_fraction:.1f}%)"
        )
    source = CacheSource(cache_dir, tc.batch_size, buffer_tokens=data.buffer_tokens, seed=tc.seed)
    return _Source(source, {**_harvest_meta(spec, out_dir, context), "cache_tokens": manifest.n_tokens}, context)


def _streaming_source(spec: RunSpec, out_dir: Path) -> _Source:
    """``--cache none``: the model harvests in a producer thread while the SAE trains (no activation cache)."""

    data, tc = spec.data, spec.train
    train, held_out, data_info, model, tokenizer = load_data_and_model(data, spec.model_and_tokenizer)
    hooks = resolve_hooks(data, model)
    if len(hooks) > 1:
        raise ValueError(f"--cache none streams one hook; --hooks {data.hooks} needs the disk cache (--cache disk)")
    if spec.shared_stream is not None:  # several SAEs from one streamed harvest (one process)
        source: StreamingSource = spec.shared_stream.source(
            hooks[0], d_model(model), tc.batch_size, buffer_tokens=data.buffer_tokens, seed=tc.seed
        )
    else:  # under torchrun each rank streams its own windows and its share (B / W rows) of each global batch
        source = StreamingSource(
            model,
            tokenizer,
            hooks[0],
            lambda: sequences_for(data, train, tokenizer),
            spec.harvest,
            d_model(model),
            tc.batch_size // world_size(),
            buffer_tokens=data.buffer_tokens,
            seed=tc.seed,
        )
    context = {
        "model": model,
        "tokenizer": tokenizer,
        "hook": hooks[0],
        "held_out": held_out,
        "data_info": data_info,
        "train_records": train,
    }
    meta = {**_harvest_meta(spec, out_dir, context), "activations": "streamed"}
    return _Source(source, meta, context)


def _cache_meta(man: Any, path: Path) -> dict[str, Any]:
    """Provenance of an SAE trained on an existing cache: what its manifest records of the harvest, so that
    ``chatsae eval`` splices and splits as for an SAE trained by one ``chatsae train`` (position 0 kept clean when
    the harvest excluded it, the training holdout re-derived from the data file)."""
    info = man.info or {}
    data, opts = info.get("data") or {}, info.get("options") or {}
    meta: dict[str, Any] = {
        "model_name": man.model,
        "hook_name": man.hook,
        "method": man.method,
        "activations": str(path),
    }
    for key in ("context_size", "max_length"):
        if info.get(key) is not None:
            meta[key] = info[key]
    if data.get("data"):
        meta["data"] = data["data"]
        if info.get("holdout"):
            meta.update(holdout=info["holdout"], holdout_seed=0)
    meta.update({k: v for k, v in opts.items() if k.startswith("exclude")})
    return meta


def _harvest_meta(spec: RunSpec, out_dir: Path, context: dict[str, Any]) -> dict[str, Any]:
    """Provenance of an SAE trained on activations harvested from a model (the held-out records written beside it)."""
    data = spec.data
    return {
        "model_name": data.model,
        "hook_name": str(context["hook"]),
        "method": data.method,
        "context_size": data.context_size,
        "max_length": data.max_length,
        "data": data.data_path,
        "eval_data": write_held_out(context["held_out"], out_dir),
        "holdout": data.holdout,
        "holdout_seed": 0,
        **{k: v for k, v in to_dict(spec.harvest).items() if k.startswith("exclude")},
    }


def _data_dict(data: Any) -> dict[str, Any]:
    """The data section of the run config, with ``model_dtype`` resolved (``auto`` -> the dtype used)."""

    return {**to_dict(data), "model_dtype": resolved_model_dtype(data)}


def harvest_kwargs(spec: RunSpec) -> dict[str, Any]:
    """Budget, resume, progress and model of a run's harvest (``pipeline.harvest`` / ``harvest_hooks`` keywords)."""
    return {
        "max_tokens": spec.harvest.max_tokens or spec.train.total_tokens,
        "resume": spec.run.resume,
        "progress": spec.train.progress,
        "model_and_tokenizer": spec.model_and_tokenizer,
    }


def sae_config(spec: RunSpec, d_in: int, source_meta: dict[str, Any]) -> SAEConfig:
    """``spec.sae`` with ``d_in`` of the activations, ``d_sae`` resolved and the provenance merged in."""
    d_sae = spec.d_sae or spec.run.expansion_factor * d_in
    meta = {**spec.sae.metadata, **source_meta, **spec.metadata}
    return dataclasses.replace(spec.sae, d_in=d_in, d_sae=d_sae, metadata=meta)


def train_run(spec: RunSpec) -> RunResult:
    """Run ``spec``: claim and lock the output directory, build the source, a seeded SAE (``train.seed``) and the
    trainer, train (resuming if asked) and, for a harvest, evaluate on the held-out records. Under torchrun the
    process group is set up from the environment for the run (data-parallel; docs/scaling.md)."""

    with distributed.session():
        if distributed.rank() != 0:
            spec = dataclasses.replace(spec, report=lambda msg: None)  # rank 0 reports for all
        return _train_run(spec)


def _train_run(spec: RunSpec) -> RunResult:

    run, tc = spec.run, spec.train
    out_dir = default_out_dir(spec)

    def claim() -> DirLock:
        claim_dir(out_dir, "run", overwrite=run.overwrite)
        return DirLock(out_dir, "chatsae train")

    with distributed.main_lock(claim):  # rank 0 claims and locks the directory for all ranks
        if not run.resume or not any(out_dir.glob(f"{CHECKPOINTS_DIR}/step_*/{CHECKPOINT_STATE_FILE}")):
            # refuse (or clear) an earlier run before a harvest
            distributed.from_rank0(lambda: check_fresh_run(out_dir, overwrite=run.overwrite))
        src = _make_source(spec, out_dir)
        cfg = sae_config(spec, src.source.d_in, src.metadata)
        sae = create_sae(cfg, seed=tc.seed)
        run_config = {
            "run": to_dict(run),
            "sae": to_dict(cfg),
            "train": to_dict(tc),
            "data": _data_dict(spec.data),
            "harvest": to_dict(spec.harvest),
            **spec.extra_config,
        }
        set_tf32(tc.tf32)  # CUDA matmuls: TF32 unless --no-tf32 (no effect on CPU)
        trainer = Trainer(sae, tc, src.source, out_dir, run_config=run_config)
        counts = data_counts(src)
        if counts:
            trainer.summary_extra["data_counts"] = counts
            warn_dropped(counts, spec.report)
        result = trainer.fit(resume=run.resume, overwrite=run.overwrite)
        rows: dict[str, str] = {}
        if result.sae_dir is not None:
            rows, held_out_fvu = _result_rows(spec, result.sae_dir, src, out_dir)
            judge_quality(result.summary, held_out_fvu, result.sae_dir, spec.report)
    return RunResult(result.sae_dir, result.summary, out_dir, rows, src.context)


def evaluate_run(spec: RunSpec, result: RunResult) -> RunResult:
    """The held-out evaluation :func:`train_run` does after training, for a run trained with ``run.evaluate`` off
    (several SAEs streamed together evaluate one after the other once all are trained)."""
    if result.sae_dir is None or not result.context:
        return result
    spec = dataclasses.replace(spec, run=dataclasses.replace(spec.run, evaluate=True))
    rows, fvu = _result_rows(spec, result.sae_dir, _Source(None, {}, result.context), result.out_dir)
    judge_quality(result.summary, fvu, result.sae_dir, spec.report)
    return result._replace(rows={**result.rows, **rows})


DROP_WARN_SHARE = 0.05
"""A warning line is printed when more than this share of the records is dropped before training."""


def data_counts(src: _Source) -> dict[str, int]:
    """What the data lost before training: records skipped as malformed (``--skip-bad``), samples dropped by the
    n-gram dedup or as empty, samples truncated at ``--max-length``; from this run's harvest, else from the cache's
    manifest ({} when unknown: tensor files, synthetic data, caches written before these counts existed)."""
    cache = getattr(src.source, "cache", None)
    return harvest_counts(src.context, cache.manifest.info if cache is not None else {})


def harvest_counts(context: dict[str, Any], info: dict[str, Any]) -> dict[str, int]:
    """:func:`data_counts` from a harvest's ``context`` (this run's counts), else a cache manifest's ``info``."""
    seq = context.get("sequence_stats") or info.get("sequences")
    if not isinstance(seq, dict):
        return {}
    data = context.get("data_info") or info.get("data") or {}
    return {
        "records_skipped_bad": int(data.get("skipped") or 0),
        "samples_read": seq.get("n_samples", 0),
        "samples_dedup_dropped": seq.get("n_duplicates", 0),
        "samples_empty_dropped": seq.get("n_empty", 0),
        "samples_truncated": seq.get("n_truncated", 0),
    }


def warn_dropped(counts: dict[str, int], report: Callable[[str], None]) -> None:
    """Report a warning line with the reasons when more than :data:`DROP_WARN_SHARE` of the records are dropped."""
    why = {
        "by the n-gram dedup (--dedup-n; 0 disables it)": counts["samples_dedup_dropped"],
        "empty (no content token)": counts["samples_empty_dropped"],
        "malformed, skipped (--skip-bad)": counts["records_skipped_bad"],
    }
    dropped, total = sum(why.values()), counts["samples_read"] + counts["records_skipped_bad"]
    if total and dropped > DROP_WARN_SHARE * total:
        reasons = ", ".join(f"{n:,} {k}" for k, n in why.items() if n)
        report(
            f"WARNING: {dropped:,} of {total:,} records ({100 * dropped / total:.1f}%) were dropped before "
            f"training: {reasons}"
        )


def count_rows(summary: dict[str, Any]) -> dict[str, str]:
    """Rows of the final table: the data counts and the outlier vectors dropped."""
    c = summary.get("data_counts") or {}
    labels = {
        "records_skipped_bad": "records skipped (--skip-bad)",
        "samples_dedup_dropped": "samples dropped by dedup",
        "samples_empty_dropped": "empty samples dropped",
        "samples_truncated": "samples truncated",
    }
    rows = {
        label: f"{c[k]:,} of {c['samples_read'] + c['records_skipped_bad']:,}" for k, label in labels.items() if k in c
    }
    rows["outlier vectors dropped"] = f"{summary.get('outlier_rows_dropped', 0):,}"
    return rows


def judge_quality(
    summary: dict[str, Any], held_out_fvu: float | None, sae_dir: Path, report: Callable[[str], None]
) -> None:
    """Mark the run ``status: failed_quality`` (with ``failure``) when the final train or held-out FVU exceeds
    ``MAX_FVU``, report it, and rewrite ``training_summary.json`` beside the SAE with the held-out FVU and status."""

    fvus = {"train": summary.get("train_fvu"), "held-out": held_out_fvu}
    bad = [f"{k} FVU {v:.4g}" for k, v in fvus.items() if v is not None and not v <= MAX_FVU]
    if held_out_fvu is not None:
        summary["eval_fvu"] = held_out_fvu
    summary["status"] = "failed_quality" if bad else "ok"
    if bad:
        summary["failure"] = (
            f"final {' and '.join(bad)} > {MAX_FVU:g}: the SAE reconstructs worse than the mean "
            f"activation; it is saved in {sae_dir} but marked failed_quality"
        )
        report(f"FAILED: {summary['failure']}")
    with atomic_file(sae_dir / TRAINING_SUMMARY_FILE, "w") as fh:
        fh.write(json.dumps(summary, indent=2, default=str))


def _result_rows(spec: RunSpec, sae_dir: Path, src: _Source, out_dir: Path) -> tuple[dict[str, str], float | None]:
    """(table rows beyond training, held-out FVU without position 0 or None)."""
    rows: dict[str, str] = {}
    fvu = None
    if spec.run.activations == "synthetic":
        rec = feature_recovery(load_sae(sae_dir).W_dec.detach(), src.source.features)
        rows["true features recovered (cos > 0.9)"] = f"{100 * (rec > 0.9).float().mean().item():.1f}%"
    if src.context and spec.run.evaluate and src.context["held_out"]:
        eval_rows, fvu = _evaluate(sae_dir, src.context, spec.run.eval_max_samples, out_dir, spec.harvest.share_prefix)
        rows.update(eval_rows)
    return rows, fvu


def write_held_out(records: list[Any], out_dir: Path) -> str | None:
    """Write the held-out records as JSONL (messages or text) so `chatsae eval SAE_DIR` finds them by itself."""
    if not records:
        return None

    path = out_dir / "heldout.jsonl"
    with atomic_file(path, "w") as fh:
        for r in records:
            fh.write(json.dumps({"messages": r.messages} if r.messages is not None else {"text": r.text}) + "\n")
    return str(path)


def _evaluate(
    sae_dir: Path,
    context: dict[str, Any],
    max_samples: int,
    out_dir: Path,
    share_prefix: bool = True,
) -> tuple[dict[str, str], float | None]:
    """Held-out evaluation (paper metrics) of the freshly trained SAE, sharing the prefix as the harvest did; returns
    (table rows, FVU without position 0)."""
    cfg = EvalConfig(max_samples=max_samples, lm_loss=True, share_prefix=share_prefix, output=str(out_dir / EVAL_FILE))
    res = evaluate(load_sae(sae_dir), context["model"], context["tokenizer"], context["held_out"], cfg)
    fvu = res.headline.get("fvu_no_pos0")
    return res.table_rows(), None if fvu is None else float(fvu)
