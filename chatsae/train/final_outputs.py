"""What a finished training run leaves: the sample of the last vectors trained on (for the trainer's final
measures), the run summary (``training_summary.json``) and the final SAE, with the input scale folded into its
weights and each latent's firing frequency saved beside it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import Tensor

from ..core.constants import RUN_CONFIG_FILE, SAE_DIR, TRAINING_SUMMARY_FILE
from ..sae import SAE, save_sae
from .init import MAX_FVU
from .steplog import mean_metrics


def last_rows(batches: list[Tensor], n: int) -> list[Tensor]:
    """The last ``n`` rows of ``batches`` (oldest first; all of them if they hold fewer): whole oldest batches beyond
    them dropped, the oldest one kept trimmed. ``batches`` (not empty) is changed in place and returned."""
    drop = sum(b.shape[0] for b in batches) - n
    while drop >= batches[0].shape[0]:  # whole oldest batches beyond the sample
        drop -= batches.pop(0).shape[0]
    if drop > 0:
        batches[0] = batches[0][drop:]
    return batches


def training_summary(
    rows: list[list[float]],
    tok_s: float,
    *,
    steps: int,
    tokens: int,
    scale: float,
    sparsity_coef: float,
    beta1: float,
    outliers_dropped: int,
    final: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The run summary: run facts, the mean step metrics of ``rows`` (the last log window) as ``train_*``, the
    ``final`` measures, the ``extra`` run facts, and ``status`` (``failed_quality`` when the training FVU is above
    :data:`~chatsae.train.init.MAX_FVU`)."""
    means = mean_metrics(rows) if rows else {}
    return {
        "steps": steps,
        "tokens": tokens,
        "input_scale": scale,
        "sparsity_coef": sparsity_coef,
        "beta1": beta1,
        "tokens_per_s": tok_s,
        **{f"train_{k}": v for k, v in means.items()},
        "outlier_rows_dropped": outliers_dropped,
        **final,
        **extra,
        "status": "failed_quality" if means.get("fvu", 0.0) > MAX_FVU else "ok",
    }


def log10_firing_frequency(fire_counts: Tensor, tokens: int) -> Tensor:
    """``[d_sae]`` log10 of each latent's firing frequency over ``tokens`` (SAELens ``sparsity``), on the CPU."""
    return (fire_counts.double() / max(tokens, 1)).clamp_min(1e-10).log10().float().cpu()


def folded_sae(sae: SAE, scale: float) -> SAE:
    """A CPU copy of ``sae`` that takes raw activations (input ``scale`` folded into the weights)."""
    sae = copy.deepcopy(sae).cpu()
    sae.fold_input_scale(scale)
    return sae


def save_final_sae(
    sae: SAE,
    scale: float,
    tokens: int,
    fire_counts: Tensor,
    out_dir: Path,
    run_config: dict[str, Any],
    summary: dict[str, Any],
) -> Path:
    """Write ``out_dir/sae/``: the SAE with the input scale folded in (its metadata saying so), its firing
    frequencies, the run config and the summary beside it; returns the directory."""
    folded = folded_sae(sae, scale)
    folded.cfg.metadata = {
        **folded.cfg.metadata,
        "input_scale_folded": scale,
        "trained_tokens": tokens,
    }
    extra = {RUN_CONFIG_FILE: run_config, TRAINING_SUMMARY_FILE: summary}
    return save_sae(folded, out_dir / SAE_DIR, sparsity=log10_firing_frequency(fire_counts, tokens), extra=extra)
