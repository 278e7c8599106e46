"""Checkpoints of training runs and their safety: writing, loading and resuming the :class:`Trainer`'s checkpoints
(atomic, checksummed, every rank's data-stream state), which run-config fields may change on resume, the comparison
naming each difference, and the refusal of a fresh run over an earlier one."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from ..core.locking import OutputDirError
from ..core.utils import atomic_dir, file_digest
from . import distributed

if TYPE_CHECKING:
    from .trainer import Trainer

VOLATILE: dict[str, tuple[str, ...]] = {
    "train": (
        "progress",
        "device",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "compile",
        "prefetch",
        "tracking",
        "tracking_dir",
        "wandb_project",
    ),
    "run": ("out_dir", "resume", "overwrite", "evaluate", "eval_max_samples"),
    "data": ("model_device", "skip_bad", "cache_dir"),
}
"""Run-config fields (per section) a resumed run or a study rerun may change: they do not change the trained SAE."""
ADDED: dict[str, dict[str, Any]] = {
    "data": {"cache": "disk", "hooks": None},
    "train": {"tf32": True, "dead_window_cap": True},
    "run": {"saes": "", "distribute_saes": False},
}
"""Run-config fields added after runs were written, with the value those runs behaved as (a resume compares it)."""
CHECKSUMS = "checksums.json"
"""File of each checkpoint holding the digest (:func:`chatsae.utils.file_digest`) of its other files."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (damaged or unreadable files)."""


def config_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"lr: 0.003 -> 0.001"`` for each field of the run configs (sections of dicts) that differs, ignoring
    :data:`VOLATILE` fields; nested dicts (SAE metadata) are compared key by key."""
    diffs = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section) or {}, new.get(section) or {}
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                diffs.append(f"{section}: {a!r} -> {b!r}")
            continue
        for key in sorted(set(a) | set(b)):
            added = ADDED.get(section, {})
            x, y = a.get(key, added.get(key)), b.get(key, added.get(key))
            if key in VOLATILE.get(section, ()) or x == y:
                continue
            if isinstance(x, dict) and isinstance(y, dict):
                diffs += [
                    f"{key}.{k}: {x.get(k)!r} -> {y.get(k)!r}" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)
                ]
            else:
                diffs.append(f"{key}: {x!r} -> {y!r}")
    return diffs


def check_fresh_run(out_dir: Path, overwrite: bool) -> None:
    """A fresh run in ``out_dir`` holding an earlier run's checkpoints or SAE is refused; ``overwrite`` removes them
    (checkpoints, metrics log, SAE: only what the trainer writes)."""
    out_dir = Path(out_dir)
    ckpts = sorted(out_dir.glob("checkpoints/step_*")) + sorted(out_dir.glob("checkpoints/.step_*"))
    sae = out_dir / "sae"
    has_sae = (sae / "cfg.json").is_file()
    if not ckpts and not has_sae:
        return
    if not overwrite:
        found = ", ".join(([f"{len(ckpts)} checkpoint(s)"] if ckpts else []) + (["a trained SAE"] if has_sae else []))
        raise OutputDirError(
            f"{out_dir}: holds an earlier run ({found}); pass --resume to continue it, --overwrite "
            "to replace it, or choose another --out-dir"
        )
    for p in ckpts:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    if has_sae:
        shutil.rmtree(sae)
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)


def verify_checkpoint(path: Path) -> None:
    """Check each file of checkpoint ``path`` against its stored digest (:class:`CheckpointError` naming the
    file); checkpoints written before checksums existed pass unchecked."""
    sums_file = path / CHECKSUMS
    if not sums_file.is_file():
        return
    try:
        sums = json.loads(sums_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{sums_file}: unreadable ({e})") from e
    for name, digest in sums.items():
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing from the checkpoint")
        if file_digest(path / name) != digest:
            raise CheckpointError(f"{path / name}: damaged (its bytes changed since it was written; checksum differs)")


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The complete checkpoints (``step_*`` holding ``state.pt``) in ``checkpoint_dir``, oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p for p in checkpoint_dir.glob("step_*") if (p / "state.pt").is_file())


def check_run_config(path: Path, run_config: dict[str, Any]) -> None:
    """ValueError if checkpoint ``path`` was written by a run with other settings than ``run_config`` (JSON form;
    each differing option named); :class:`CheckpointError` if its run config is unreadable."""
    file = path / "run_config.json"
    if not file.is_file():
        return  # written before run configs were stored
    try:
        old = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from e
    diffs = config_diffs(old, run_config)
    if diffs:
        raise ValueError(
            f"{path}: --resume of a run with other settings ({'; '.join(diffs)}); resume with the "
            "same settings, or start afresh with --overwrite or another --out-dir"
        )


def resume_latest(trainer: Trainer) -> Path | None:
    """Load the latest intact checkpoint of ``trainer`` (a damaged one is skipped with a warning, falling back to the
    one before); None if there is none. Refuses (ValueError naming each option) a checkpoint of other settings."""
    ckpts = trainer.checkpoints()
    errors = []
    for path in reversed(ckpts):
        try:
            verify_checkpoint(path)
            trainer.check_run_config(path)
            trainer.load_checkpoint(path)
            return path
        except CheckpointError as e:
            errors.append(str(e))
            print(f"warning: {e}; trying the previous checkpoint", file=sys.stderr)
    if ckpts:
        raise CheckpointError(f"{trainer.checkpoint_dir}: no intact checkpoint to resume from ({'; '.join(errors)})")
    return None


def rank_state(trainer: Trainer) -> dict[str, Any]:
    """What differs between ranks: data-stream position (with its mixing buffer and RNG), dropped-outlier count."""
    return {"source": trainer.source.state_dict(), "outliers_dropped": trainer.outliers_dropped}


def save_checkpoint(trainer: Trainer) -> Path | None:
    """Write ``checkpoint_dir/step_N/`` atomically (SAE, optimizer, state of every rank, configs, checksums) and
    remove all but the last ``keep_checkpoints``; the path, or None on ranks other than 0 (which only send theirs)."""
    ranks = distributed.all_gather_objects(rank_state(trainer)) if trainer.world > 1 else None
    if not trainer.is_main:
        return None
    path = trainer.checkpoint_dir / f"step_{trainer.step:010d}"
    with atomic_dir(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in trainer.sae.state_dict().items()},
            str(tmp / "sae.safetensors"),
        )
        torch.save(trainer.optimizer.state_dict(), tmp / "optimizer.pt")
        state = {
            "step": trainer.step,
            "tokens": trainer.tokens,
            "scale": trainer.scale,
            "input_limit": trainer.input_limit,
            "outliers_dropped": trainer.outliers_dropped,
            "since_fired": trainer.since_fired.cpu(),
            "fire_counts": trainer.fire_counts.cpu(),
            "source": trainer.source.state_dict(),
            "window": trainer.window_rows(trainer.window),
            "world_size": trainer.world,
        }
        if ranks is not None:
            state["ranks"] = ranks
        if trainer.scaler.is_enabled():
            state["grad_scaler"] = trainer.scaler.state_dict()
        torch.save(state, tmp / "state.pt")
        (tmp / "sae_config.json").write_text(json.dumps(trainer.sae.cfg.to_dict(), indent=2))
        (tmp / "run_config.json").write_text(json.dumps(trainer._run_config_json(), indent=2))
        sums = {f.name: file_digest(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2))
    for old in sorted(trainer.checkpoint_dir.glob("step_*"))[: -max(trainer.cfg.keep_checkpoints, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(trainer: Trainer, path: Path) -> None:
    """Restore ``trainer`` (weights, optimizer, counters, this rank's data-stream position and RNG) from checkpoint
    ``path`` and drop the metrics-log lines written after it. :class:`CheckpointError` naming an unreadable file;
    ValueError for a checkpoint of a run on another number of processes."""
    file = path / "sae.safetensors"
    try:
        trainer.sae.load_state_dict(load_file(str(file), device=str(trainer.device)))
        file = path / "optimizer.pt"
        trainer.optimizer.load_state_dict(torch.load(file, weights_only=True))
        file = path / "state.pt"
        state = torch.load(file, weights_only=True)
        if not isinstance(state, dict) or not {"step", "tokens", "scale", "source"} <= set(state):
            raise KeyError("step, tokens, scale or source missing")
    except Exception as e:  # noqa: BLE001 -- any unreadable file: one clear line naming it
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{file}: cannot resume from this checkpoint ({type(e).__name__}: {first})") from e
    theirs, world = int(state.get("world_size", 1)), trainer.world
    if theirs != world:
        raise ValueError(
            f"{path}: checkpoint of a run on {theirs} process(es), this run has {world}: resume "
            f"with the same number (torchrun --nproc-per-node ...; docs/scaling.md), or start "
            "afresh with --overwrite or another --out-dir"
        )
    mine = state["ranks"][trainer.rank] if world > 1 else state
    trainer.step, trainer.tokens, trainer.scale = int(state["step"]), int(state["tokens"]), float(state["scale"])
    trainer.input_limit = float(state.get("input_limit", math.inf))  # older checkpoints: NaN/Inf checked only
    trainer.outliers_dropped = int(mine.get("outliers_dropped", 0))
    trainer.since_fired = state["since_fired"].to(trainer.device)
    trainer.fire_counts = state["fire_counts"].to(trainer.device)
    trainer.window = [torch.tensor(m, dtype=torch.float32, device=trainer.device) for m in state.get("window", [])]
    trainer._dead = trainer.dead_mask()
    if "grad_scaler" in state:
        trainer.scaler.load_state_dict(state["grad_scaler"])
    trainer.source.load_state_dict(mine["source"])
    metrics = trainer.metrics_path
    if trainer.is_main and metrics.is_file():  # drop log lines written after the checkpoint
        rows = [r for r in metrics.read_text().splitlines() if r.strip()]
        kept = [r for r in rows if json.loads(r)["step"] <= trainer.step]
        metrics.write_text("".join(r + "\n" for r in kept))
    if trainer.is_main:
        print(f"resumed from {path} at step {trainer.step} ({trainer.tokens:,} tokens)")
