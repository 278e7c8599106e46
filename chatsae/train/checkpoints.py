"""Checkpoints of training runs and their safety: writing, loading and resuming the :class:`Trainer`'s checkpoints
(atomic, checksummed, every rank's data-stream state), the run-config fields added after runs were written, the
comparison naming each difference (skipping the fields marked as free to change on resume), and the refusal of a fresh
run over an earlier one."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file

from ..core import distributed as pg
from ..core.config import resume_volatile
from ..core.constants import (
    CHECKPOINT_OPTIMIZER_FILE,
    CHECKPOINT_RUN_CONFIG_FILE,
    CHECKPOINT_SAE_CONFIG_FILE,
    CHECKPOINT_SAE_FILE,
    CHECKPOINT_STATE_FILE,
    CHECKPOINTS_DIR,
    CHECKSUMS_FILE,
    METRICS_LOG_FILE,
    SAE_CFG_FILE,
    SAE_DIR,
)
from ..core.faults import DiskFullError
from ..core.locking import OutputDirError
from ..core.ownership import is_chatsae_dir, is_empty_dir, owns, read_marker, remove_owned
from ..core.utils import atomic_dir, file_digest, read_json_file, torch_save
from ..sae import SAE
from .state import TrainState

ADDED: dict[str, dict[str, Any]] = {
    "data": {"cache": "disk", "hooks": None},
    "train": {"tf32": True, "dead_window_cap": True},
    "run": {"saes": "", "distribute_saes": False},
    "harvest": {"max_padding": None},
}
"""Run-config fields added after runs were written, with the value those runs behaved as (a resume compares it)."""
CHECKSUMS = CHECKSUMS_FILE
"""File of each checkpoint holding the digest (:func:`chatsae.utils.file_digest`) of its other files."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (damaged or unreadable files)."""


def config_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"lr: 0.003 -> 0.001"`` for each field of the run configs (sections of dicts) that differs, ignoring the fields
    a resumed run may change (marked on their config classes: :func:`~chatsae.core.config.resume_volatile`); nested
    dicts (SAE metadata) are compared key by key."""
    volatile = resume_volatile()
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
            if key in volatile.get(section, ()) or x == y:
                continue
            if isinstance(x, dict) and isinstance(y, dict):
                diffs += [
                    f"{key}.{k}: {x.get(k)!r} -> {y.get(k)!r}" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)
                ]
            else:
                diffs.append(f"{key}: {x!r} -> {y!r}")
    return diffs


def check_fresh_run(out_dir: Path, overwrite: bool) -> None:
    """A fresh run in ``out_dir`` holding an earlier run's checkpoints or SAE is refused; ``overwrite`` removes only
    the files chatsae wrote there (recorded in their markers, bytes unchanged: :mod:`chatsae.core.ownership`). A
    folder or file of a user where the run writes (``sae/``, ``checkpoints/step_N``, ``metrics.jsonl`` that
    chatsae did not write) is refused, ``overwrite`` or not, before anything is removed."""
    out_dir = Path(out_dir)
    steps = sorted(p for p in out_dir.glob(f"{CHECKPOINTS_DIR}/step_*") if p.is_dir() and not p.is_symlink())
    sae, metrics = out_dir / SAE_DIR, out_dir / METRICS_LOG_FILE
    legacy_log = "files" not in read_marker(out_dir) and "written" not in read_marker(out_dir)  # older run markers
    foreign = [p for p in steps if not is_chatsae_dir(p) and not is_empty_dir(p)]
    foreign += [sae] if (sae.exists() or sae.is_symlink()) and not is_chatsae_dir(sae) and not is_empty_dir(sae) else []
    if metrics.exists() and not (owns(out_dir, METRICS_LOG_FILE) or (legacy_log and is_chatsae_dir(out_dir))):
        foreign.append(metrics)
    if foreign:
        raise OutputDirError(
            f"{foreign[0]}: chatsae did not write it, and the run writes there; move it away or choose another "
            "--out-dir"
        )
    ckpts = [p for p in steps if is_chatsae_dir(p)]
    has_sae = is_chatsae_dir(sae) and (sae / SAE_CFG_FILE).is_file()
    if not ckpts and not has_sae:
        return
    if not overwrite:
        found = ", ".join(([f"{len(ckpts)} checkpoint(s)"] if ckpts else []) + (["a trained SAE"] if has_sae else []))
        raise OutputDirError(
            f"{out_dir}: holds an earlier run ({found}); pass --resume to continue it, --overwrite "
            "to replace it (only the files chatsae wrote are removed), or choose another --out-dir"
        )
    kept = [f"{p.name}/{k}" for p in ckpts for k in remove_owned(p)] + [f"{SAE_DIR}/{k}" for k in remove_owned(sae)]
    if metrics.exists():
        metrics.unlink()
    if kept:
        print(f"--overwrite: kept {len(kept)} file(s) chatsae did not write ({', '.join(kept[:3])})", file=sys.stderr)


def verify_checkpoint(path: Path) -> None:
    """Check each file of checkpoint ``path`` against its stored digest (:class:`CheckpointError` naming the
    file); checkpoints written before checksums existed pass unchecked."""
    sums_file = path / CHECKSUMS
    if not sums_file.is_file():
        return
    try:
        sums = read_json_file(sums_file, "the checkpoint's checksums ({file name: digest})")
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    except OSError as e:
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
    return sorted(p for p in checkpoint_dir.glob("step_*") if (p / CHECKPOINT_STATE_FILE).is_file())


def check_run_config(path: Path, run_config: dict[str, Any]) -> None:
    """ValueError if checkpoint ``path`` was written by a run with other settings than ``run_config`` (JSON form;
    each differing option named); :class:`CheckpointError` if its run config is unreadable."""
    file = path / CHECKPOINT_RUN_CONFIG_FILE
    if not file.is_file():
        return  # written before run configs were stored
    try:
        old = read_json_file(file, "the run settings the checkpoint was written with")
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    except OSError as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from e
    diffs = config_diffs(old, run_config)
    if diffs:
        raise ValueError(
            f"{path}: --resume of a run with other settings ({'; '.join(diffs)}); resume with the "
            "same settings, or start afresh with --overwrite or another --out-dir"
        )


def resume_latest(checkpoint_dir: Path, load: Callable[[Path], None]) -> Path | None:
    """Load (``load(path)``: verify the run config, then restore) the latest intact checkpoint under
    ``checkpoint_dir``; a damaged one is skipped with a warning, falling back to the one before. None if there is
    none; :class:`CheckpointError` when none is intact."""
    ckpts = list_checkpoints(checkpoint_dir)
    errors = []
    for path in reversed(ckpts):
        try:
            verify_checkpoint(path)
            load(path)
            return path
        except CheckpointError as e:
            errors.append(str(e))
            print(f"warning: {e}; trying the previous checkpoint", file=sys.stderr)
    if ckpts:
        raise CheckpointError(f"{checkpoint_dir}: no intact checkpoint to resume from ({'; '.join(errors)})")
    return None


class Checkpointed(NamedTuple):
    """What a checkpoint holds besides the :class:`TrainState`: the SAE, its optimiser (and fp16 grad scaler), the
    data source whose position and RNG are saved, and the run config a resume must match."""

    sae: SAE
    optimizer: torch.optim.Optimizer
    source: Any
    """An :class:`chatsae.activations.ActivationSource` (``state_dict()`` / ``load_state_dict()``)."""
    run_config: dict[str, Any]
    scaler: torch.amp.GradScaler | None = None


def save_checkpoint(
    path: Path, state: TrainState, parts: Checkpointed, window_rows: list[list[float]], world: int = 1
) -> Path | None:
    """Write checkpoint ``path`` (``.../step_N``) atomically: SAE, optimiser, training state (every rank's data-stream
    state under torchrun), configs, checksums. Every rank calls it (the others only send their state); returns
    ``path`` on rank 0, None elsewhere."""
    mine = {"source": parts.source.state_dict(), "outliers_dropped": state.outliers_dropped}
    ranks = pg.all_gather_objects(mine) if world > 1 else None
    if pg.rank() != 0:
        return None
    try:
        write_checkpoint(path, state, parts, mine["source"], window_rows, world, ranks)
    except DiskFullError as e:
        earlier = list_checkpoints(path.parent)
        last = f"from {earlier[-1]}" if earlier else "from the start (no earlier checkpoint)"
        raise DiskFullError(
            f"{e}; training stopped at step {state.step}: free space and rerun with --resume {last}"
        ) from e
    return path


def write_checkpoint(
    path: Path,
    state: TrainState,
    parts: Checkpointed,
    source_state: Any,
    window_rows: list[list[float]],
    world: int,
    ranks: list[Any] | None,
) -> None:
    """The files of checkpoint ``path``, written atomically (a full disk leaves the earlier checkpoints intact)."""
    weight_bytes = sum(t.numel() * t.element_size() for t in parts.sae.state_dict().values())
    with atomic_dir(path, kind="checkpoint", needed=3 * weight_bytes) as tmp:  # weights + Adam's two moments
        weights = {k: v.detach().cpu().contiguous() for k, v in parts.sae.state_dict().items()}
        save_file(weights, str(tmp / CHECKPOINT_SAE_FILE))
        torch_save(parts.optimizer.state_dict(), tmp / CHECKPOINT_OPTIMIZER_FILE)
        saved = {**state.state_dict(), "source": source_state, "window": window_rows, "world_size": world}
        if ranks is not None:
            saved["ranks"] = ranks
        if parts.scaler is not None and parts.scaler.is_enabled():
            saved["grad_scaler"] = parts.scaler.state_dict()
        torch_save(saved, tmp / CHECKPOINT_STATE_FILE)
        (tmp / CHECKPOINT_SAE_CONFIG_FILE).write_text(json.dumps(parts.sae.cfg.to_dict(), indent=2))
        (tmp / CHECKPOINT_RUN_CONFIG_FILE).write_text(json.dumps(parts.run_config, indent=2))
        sums = {f.name: file_digest(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2))


def prune_checkpoints(checkpoint_dir: Path, keep: int) -> None:
    """Remove all but the last ``keep`` (at least 1) complete checkpoints: only the files chatsae wrote in them."""
    for old in list_checkpoints(checkpoint_dir)[: -max(keep, 1)]:
        if is_chatsae_dir(old):
            remove_owned(old)


def load_checkpoint(path: Path, state: TrainState, parts: Checkpointed, world: int = 1) -> None:
    """Restore ``state``, the SAE, optimiser, grad scaler and this rank's data-stream position and RNG from checkpoint
    ``path``. :class:`CheckpointError` naming an unreadable file; ValueError for a checkpoint of a run on another
    number of processes."""
    file = path / CHECKPOINT_SAE_FILE
    device = parts.sae.W_dec.device
    try:
        parts.sae.load_state_dict(load_file(str(file), device=str(device)))
        file = path / CHECKPOINT_OPTIMIZER_FILE
        parts.optimizer.load_state_dict(torch.load(file, weights_only=True))
        file = path / CHECKPOINT_STATE_FILE
        saved = torch.load(file, weights_only=True)
        if not isinstance(saved, dict) or not {"step", "tokens", "scale", "source"} <= set(saved):
            raise KeyError("step, tokens, scale or source missing")
    except Exception as e:  # noqa: BLE001 -- any unreadable file: one clear line naming it
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{file}: cannot resume from this checkpoint ({type(e).__name__}: {first})") from e
    theirs = int(saved.get("world_size", 1))
    if theirs != world:
        raise ValueError(
            f"{path}: checkpoint of a run on {theirs} process(es), this run has {world}: resume "
            f"with the same number (torchrun --nproc-per-node ...; docs/scaling.md), or start "
            "afresh with --overwrite or another --out-dir"
        )
    mine = saved["ranks"][pg.rank()] if world > 1 else saved
    state.load_state_dict(saved, mine)
    if "grad_scaler" in saved and parts.scaler is not None:
        parts.scaler.load_state_dict(saved["grad_scaler"])
    parts.source.load_state_dict(mine["source"])
