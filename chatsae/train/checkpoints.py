"""Safety of training runs: which run-config fields may change on resume, the comparison naming each difference,
the refusal of a fresh run over an earlier one, and checkpoint checksums."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..locking import OutputDirError
from ..utils import file_digest

VOLATILE: dict[str, tuple[str, ...]] = {
    "train": ("progress", "device", "log_every", "checkpoint_every", "keep_checkpoints", "compile", "prefetch",
              "tracking", "tracking_dir", "wandb_project"),
    "run": ("out_dir", "resume", "overwrite", "evaluate", "eval_max_samples"),
    "data": ("model_device", "skip_bad", "cache_dir"),
}
"""Run-config fields (per section) a resumed run or a study rerun may change: they do not change the trained SAE."""
ADDED: dict[str, dict[str, Any]] = {"data": {"cache": "disk", "hooks": None}, "train": {"tf32": True}}
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
                diffs += [f"{key}.{k}: {x.get(k)!r} -> {y.get(k)!r}" for k in sorted(set(x) | set(y))
                          if x.get(k) != y.get(k)]  # fmt: skip
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
        raise OutputDirError(f"{out_dir}: holds an earlier run ({found}); pass --resume to continue it, --overwrite "
                             "to replace it, or choose another --out-dir")  # fmt: skip
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
