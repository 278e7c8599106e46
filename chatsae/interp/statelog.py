"""Crash-safe incremental saving of a dict of fixed-shape tensors: a base checkpoint plus one small diff per step.

Layout of a directory managed by :class:`StateLog`::

    state.safetensors          base checkpoint; safetensors metadata holds {"step": N, ...progress}
    log/step_00000123.safetensors   the entries that changed in step 123: "<name>.idx" (flat int64 indices) and
                                    "<name>.val" (new values), metadata {"step": "123", ...progress}

Every file is written atomically (temporary file + rename), so a crash leaves either the old or the new version.
Loading reads the base, then replays the diffs ``base_step + 1, base_step + 2, ...`` in order (a gap ends the
replay). :meth:`StateLog.checkpoint` folds the diffs into a new base and deletes them. A crash therefore loses at
most the step being written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from ..core.ownership import forget, is_chatsae_dir, owns, record
from ..core.utils import atomic_file

BASE_FILE = "state.safetensors"
LOG_DIR = "log"
_STEP_FILE = re.compile(r"^step_(\d{8,})\.safetensors$")


def diff_state(old: dict[str, Tensor], new: dict[str, Tensor]) -> dict[str, Tensor]:
    """The entries of ``new`` that differ from ``old`` (same keys and shapes), as flat indices and values."""
    out: dict[str, Tensor] = {}
    for name, value in new.items():
        before = old[name]
        if before.shape != value.shape:
            raise ValueError(f"state tensor {name!r} changed shape {tuple(before.shape)} -> {tuple(value.shape)}")
        changed = (before != value).reshape(-1).nonzero(as_tuple=True)[0]
        if changed.numel():
            out[f"{name}.idx"] = changed.cpu()
            out[f"{name}.val"] = value.reshape(-1)[changed].cpu()
    return out


def apply_diff(state: dict[str, Tensor], diff: dict[str, Tensor]) -> None:
    """Write the entries of ``diff`` (from :func:`diff_state`) into ``state`` in place."""
    for key, idx in diff.items():
        if not key.endswith(".idx"):
            continue
        name = key[: -len(".idx")]
        if name not in state:
            raise KeyError(f"diff names an unknown state tensor {name!r}")
        target = state[name]
        target.view(-1)[idx.to(target.device)] = diff[f"{name}.val"].to(target.device, target.dtype)


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    data = path.read_bytes()
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    return tensors, meta


def _write(path: Path, tensors: dict[str, Tensor], meta: Mapping[str, Any], root: Path) -> None:
    """Write ``path`` atomically; in chatsae's directory ``root`` it is recorded there (ownership: a later
    ``--overwrite`` removes it, and only it)."""
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, {k: str(v) for k, v in meta.items()})
    with atomic_file(path, keep_record=False) as fh:
        fh.write(blob)
    if is_chatsae_dir(root):
        record(root, path.relative_to(root).as_posix())


class StateLog:
    """Base checkpoint + per-step diffs in ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.base = self.root / BASE_FILE
        self.log_dir = self.root / LOG_DIR

    def exists(self) -> bool:
        return self.base.is_file()

    def _step_files(self) -> list[tuple[int, Path]]:
        if not self.log_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.log_dir.iterdir() if (m := _STEP_FILE.match(p.name))]
        return sorted(found)

    def checkpoint(self, state: dict[str, Tensor], progress: Mapping[str, Any]) -> None:
        """Write ``state`` as the new base (``progress`` must hold ``step``), then drop the diffs it contains."""
        step = int(progress["step"])
        _write(self.base, state, progress, self.root)
        self._drop(s for s, _ in self._step_files() if s <= step)

    def _rel(self, step: int) -> str:
        return f"{LOG_DIR}/step_{step:08d}.safetensors"

    def _drop(self, steps: Any) -> None:
        """Remove the diffs of ``steps`` (in chatsae's directory: only those it recorded, unchanged)."""
        ours = is_chatsae_dir(self.root)
        gone = [self._rel(s) for s in steps if not ours or owns(self.root, self._rel(s))]
        for rel in gone:
            (self.root / rel).unlink(missing_ok=True)
        if ours and gone:
            forget(self.root, gone)

    def drop_log(self) -> None:
        """Remove every diff (the base holds every step) and ``log/`` if nothing else is left in it."""
        self._drop(s for s, _ in self._step_files())
        if self.log_dir.is_dir() and not any(self.log_dir.iterdir()):
            self.log_dir.rmdir()

    def append(self, diff: dict[str, Tensor], progress: Mapping[str, Any]) -> None:
        """Record the diff of step ``progress["step"]``."""
        step = int(progress["step"])
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _write(self.root / self._rel(step), diff, progress, self.root)

    def load(self, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
        """The latest state and its progress metadata (base + replayed diffs)."""
        if not self.exists():
            raise FileNotFoundError(f"{self.base}: no checkpoint here")
        state, progress = _read(self.base)
        state = {k: v.to(device) for k, v in state.items()}
        step = int(progress.get("step", 0))
        for s, path in self._step_files():
            if s <= step:
                continue
            if s != step + 1:
                break  # a gap: later diffs cannot be applied
            try:
                diff, meta = _read(path)
            except ValueError:
                break  # unreadable diff: stop here, the step will be recomputed
            apply_diff(state, diff)
            progress, step = meta, s
        return state, progress
