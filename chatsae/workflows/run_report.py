"""What a training run reports beyond the trainer's metrics: the records and samples the data lost before training
(with a warning when too many), the robust reconstruction measures beside FVU (on the last training vectors, the
channels dominating the harvest's variance, the held-out ones) with the fidelity warnings, the rows of the final
table, and the quality verdict (``status: failed_quality`` when the SAE reconstructs worse than the mean
activation)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..activations.pipeline import HarvestContext
from ..activations.variance import dominance_note
from ..core.constants import TRAINING_SUMMARY_FILE
from ..core.utils import atomic_file
from ..eval.result import json_safe
from ..eval.robust import fidelity_warnings
from ..eval.streaming import ReconstructionAccumulator
from ..sae import SAE
from ..train.init import MAX_FVU
from .run_source import RunSource

DROP_WARN_SHARE = 0.05
"""A warning line is printed when more than this share of the records is dropped before training."""


def data_counts(src: RunSource) -> dict[str, int]:
    """What the data lost before training: records skipped as malformed (``--skip-bad``), samples dropped by the
    n-gram dedup or as empty, samples truncated at ``--max-length``; from this run's harvest, else from the cache's
    manifest ({} when unknown: tensor files, synthetic data, caches written before these counts existed)."""
    cache = getattr(src.source, "cache", None)
    return harvest_counts(src.context, cache.manifest.info if cache is not None else {})


def harvest_counts(context: HarvestContext | None, info: dict[str, Any]) -> dict[str, int]:
    """:func:`data_counts` from a harvest's ``context`` (this run's counts), else a cache manifest's ``info``."""
    seq = (context.sequence_stats if context is not None else None) or info.get("sequences")
    if not isinstance(seq, dict):
        return {}
    data = context.data_info.as_dict() if context is not None else info.get("data") or {}
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


ROBUST_KEYS = ("fvu", "cosine_median", "fvu_no_dominant", "fvu_standardized", "dominant_channels", "dominant_share")
"""The robust measures (:mod:`chatsae.eval.robust`) a training summary carries, with the FVU they are set against."""


def training_measures(sae: SAE, batches: list[Tensor]) -> dict[str, Any]:
    """The trainer's :attr:`~chatsae.train.trainer.Trainer.final_measures`: FVU and the robust measures of the final
    SAE on the last vectors it trained on (``train_robust``, with their count as ``tokens``), and the sentences saying
    where they disagree (``train_fidelity_warnings``)."""
    acc = ReconstructionAccumulator()
    for x in batches:
        acc.update(x.float(), sae(x.float()).float(), torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
    r = acc.result()
    where = f"training data, last {r['tokens']:,} vectors"
    return {
        "train_robust": json_safe({"tokens": r["tokens"], **{k: r[k] for k in ROBUST_KEYS}}),
        "train_fidelity_warnings": fidelity_warnings(r, where),
    }


def harvest_variance(src: RunSource) -> tuple[dict[str, Any] | None, str | None]:
    """(the channel variance recorded by the cache's harvest, the line naming its dominant channels) of a run on an
    activation cache; (None, None) without one (or for a cache harvested before it was recorded)."""
    cache = getattr(src.source, "cache", None)
    if cache is None:
        return None, None
    cv = cache.manifest.info.get("channel_variance")
    return cv, dominance_note(cv, cache.manifest.hook)


def held_out_measures(metrics: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """What the training summary carries of the held-out evaluation's robust measures (the tokens trained on:
    position 0 excluded) and its fidelity warnings."""
    return {
        "eval_robust": json_safe({k: metrics.get(k) for k in ("tokens", *ROBUST_KEYS)}),
        "eval_fidelity_warnings": warnings,
    }


def robust_rows(summary: dict[str, Any]) -> dict[str, str]:
    """Rows of the final table: the robust measures on the last training vectors beside their FVU, the channels
    dominating the harvest's variance, and the training data's fidelity warnings."""
    rows: dict[str, str] = {}
    tr = summary.get("train_robust") or {}
    if tr.get("tokens"):
        n = f"last {tr['tokens']:,} training vectors"
        labels = {
            "fvu": "FVU",
            "cosine_median": "cosine median",
            "fvu_no_dominant": "FVU without dominant channels",
            "fvu_standardized": "FVU per-channel standardised",
        }
        for k, label in labels.items():
            v = tr.get(k)
            rows[f"train {label} ({n})"] = "-" if v is None else f"{v:.4g}"
    dom = (summary.get("harvest_channel_variance") or {}).get("dominant_channels") or []
    if "harvest_channel_variance" in summary:
        rows["channels dominating the harvest's variance"] = (
            ", ".join(f"{int(c)} ({100 * s:.0f}%)" for c, s in dom) or "none"
        )
    for i, line in enumerate(summary.get("train_fidelity_warnings") or [], 1):
        rows[f"train WARNING {i}"] = line
    return rows


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
