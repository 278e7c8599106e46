"""One training run, written once: activation source (synthetic, saved activations, or harvested from a model) ->
SAE -> :class:`~chatsae.train.Trainer` -> optional held-out evaluation.

``chatsae train`` is a thin wrapper around :func:`train_run`, and the studies (``compare``, ``sweep``) train each of
their SAEs with it; distribution, streaming and several SAEs per run belong here. The run's inputs and result are
in :mod:`.run_spec`, its activation sources in :mod:`.run_source`, what it reports beyond the trainer's metrics
(data counts, the quality verdict) in :mod:`.run_report`; their names are re-exported here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..activations import feature_recovery
from ..activations.pipeline import HarvestContext, resolved_model_dtype
from ..core import distributed
from ..core.config import to_dict
from ..core.constants import CHECKPOINT_STATE_FILE, CHECKPOINTS_DIR, EVAL_FILE
from ..core.devices import set_tf32
from ..core.locking import DirLock, claim_dir
from ..eval import EvalConfig, evaluate
from ..sae import create_sae, load_sae
from ..train.checkpoints import check_fresh_run
from ..train.trainer import Trainer
from .run_report import (
    DROP_WARN_SHARE,
    count_rows,
    data_counts,
    harvest_counts,
    harvest_variance,
    held_out_measures,
    judge_quality,
    robust_rows,
    training_measures,
    warn_dropped,
)
from .run_source import RunSource, make_source, write_held_out
from .run_spec import (
    RunConfig,
    RunResult,
    RunSpec,
    check_ignored,
    default_out_dir,
    harvest_kwargs,
    hook_hint,
    sae_config,
)

__all__ = [
    "DROP_WARN_SHARE",
    "RunConfig",
    "RunResult",
    "RunSource",
    "RunSpec",
    "check_ignored",
    "count_rows",
    "data_counts",
    "default_out_dir",
    "evaluate_run",
    "harvest_counts",
    "harvest_kwargs",
    "hook_hint",
    "judge_quality",
    "robust_rows",
    "sae_config",
    "train_run",
    "warn_dropped",
    "write_held_out",
]


def _data_dict(data: Any) -> dict[str, Any]:
    """The data section of the run config, with ``model_dtype`` resolved (``auto`` -> the dtype used)."""

    return {**to_dict(data), "model_dtype": resolved_model_dtype(data)}


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
        src = make_source(spec, out_dir)
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
        trainer.final_measures = training_measures  # robust measures beside FVU on the last training vectors
        variance, note = harvest_variance(src)
        if variance is not None:
            trainer.summary_extra["harvest_channel_variance"] = variance
        if note:
            spec.report(note)
        result = trainer.fit(resume=run.resume, overwrite=run.overwrite)
        rows: dict[str, str] = {}
        if result.sae_dir is not None:
            rows, held_out_fvu = _result_rows(spec, result.sae_dir, src, out_dir, result.summary)
            judge_quality(result.summary, held_out_fvu, result.sae_dir, spec.report)
    return RunResult(result.sae_dir, result.summary, out_dir, rows, src.context)


def evaluate_run(spec: RunSpec, result: RunResult) -> RunResult:
    """The held-out evaluation :func:`train_run` does after training, for a run trained with ``run.evaluate`` off
    (several SAEs streamed together evaluate one after the other once all are trained)."""
    if result.sae_dir is None or result.context is None:
        return result
    spec = dataclasses.replace(spec, run=dataclasses.replace(spec.run, evaluate=True))
    rows, fvu = _result_rows(spec, result.sae_dir, RunSource(None, {}, result.context), result.out_dir, result.summary)
    judge_quality(result.summary, fvu, result.sae_dir, spec.report)
    return result._replace(rows={**result.rows, **rows})


def _result_rows(
    spec: RunSpec, sae_dir: Path, src: RunSource, out_dir: Path, summary: dict[str, Any]
) -> tuple[dict[str, str], float | None]:
    """(table rows beyond training, held-out FVU without position 0 or None); the held-out robust measures and
    fidelity warnings go into ``summary`` (:func:`~.run_report.held_out_measures`)."""
    rows: dict[str, str] = {}
    fvu = None
    if spec.run.activations == "synthetic":
        rec = feature_recovery(load_sae(sae_dir).W_dec.detach(), src.source.features)
        rows["true features recovered (cos > 0.9)"] = f"{100 * (rec > 0.9).float().mean().item():.1f}%"
    if src.context is not None and spec.run.evaluate and src.context.held_out:
        eval_rows, fvu = _evaluate(
            sae_dir, src.context, spec.run.eval_max_samples, out_dir, summary, spec.harvest.share_prefix
        )
        rows.update(eval_rows)
    return rows, fvu


def _evaluate(
    sae_dir: Path,
    context: HarvestContext,
    max_samples: int,
    out_dir: Path,
    summary: dict[str, Any],
    share_prefix: bool = True,
) -> tuple[dict[str, str], float | None]:
    """Held-out evaluation (paper metrics) of the freshly trained SAE, sharing the prefix as the harvest did; returns
    (table rows, FVU without position 0) and puts the robust measures and warnings into ``summary``."""
    cfg = EvalConfig(max_samples=max_samples, lm_loss=True, share_prefix=share_prefix, output=str(out_dir / EVAL_FILE))
    res = evaluate(load_sae(sae_dir), context.model, context.tokenizer, context.held_out, cfg)
    summary.update(held_out_measures(res.metrics.get("all_no_pos0") or {}, res.warnings()))
    fvu = res.headline.get("fvu_no_pos0")
    return res.table_rows(), None if fvu is None else float(fvu)
