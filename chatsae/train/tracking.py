"""Experiment tracking: the rows of ``metrics.jsonl`` also sent to TensorBoard and/or Weights & Biases (rank 0 only).

``--tracking tensorboard`` writes event files under ``OUT_DIR/tensorboard`` (``tensorboard --logdir runs``);
``--tracking wandb`` logs to a W&B run in project ``--wandb-project`` (``WANDB_MODE=offline`` keeps it local, under
``OUT_DIR/wandb``); ``--tracking tensorboard,wandb`` does both. The packages are optional extras:
``pip install 'chatsae[tensorboard]'`` / ``'chatsae[wandb]'``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

BACKENDS = ("tensorboard", "wandb")


def parse_backends(text: str) -> list[str]:
    """``"tensorboard,wandb"`` -> the backends (``none`` or empty -> []); ValueError naming an unknown one."""
    names = [t.strip() for t in (text or "").split(",") if t.strip() and t.strip() != "none"]
    for name in names:
        if name not in BACKENDS:
            raise ValueError(f"--tracking: unknown backend {name!r}; use none, {', '.join(BACKENDS)} (comma-separated)")
    return list(dict.fromkeys(names))


def check_installed(backends: list[str]) -> None:
    """ValueError naming the extra to install for a backend whose package is missing."""
    for name in backends:
        if importlib.util.find_spec(name) is None:
            raise ValueError(
                f"--tracking: {name} needs the {name} package, which is not installed: pip install 'chatsae[{name}]'"
            )


class Tracker:
    """Sends each logged row (a dict of numbers) to the chosen backends, keyed by optimizer step."""

    def __init__(
        self,
        backends: list[str],
        out_dir: str | Path,
        run_config: dict[str, Any],
        project: str,
        run_name: str | None = None,
    ) -> None:
        check_installed(backends)
        self.out_dir = Path(out_dir)
        self.tb: Any = None
        self.wandb_run: Any = None
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency (.[tensorboard])

            self.tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        if "wandb" in backends:
            import wandb  # optional dependency (.[wandb])

            self.wandb_run = wandb.init(
                project=project, name=run_name or self.out_dir.name, dir=str(self.out_dir), config=run_config
            )

    def log(self, row: dict[str, Any], step: int) -> None:
        scalars = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"train/{k}", v, global_step=step)
        if self.wandb_run is not None:
            self.wandb_run.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        """Final values (the training summary) as run summary (W&B) / text (TensorBoard)."""
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if self.wandb_run is not None:
            self.wandb_run.summary.update(numbers)
        if self.tb is not None:
            self.tb.add_text("summary", "\n".join(f"{k}: {v}" for k, v in numbers.items()))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
