"""Training: config, schedules, data-dependent initialisation and the trainer."""

from .config import TrainConfig
from .init import geometric_median, input_scale
from .run import RunConfig, RunResult, RunSpec, train_run
from .trainer import StepMetrics, Trainer, TrainResult

__all__ = [
    "RunConfig", "RunResult", "RunSpec", "StepMetrics", "TrainConfig", "TrainResult", "Trainer", "geometric_median",
    "input_scale", "train_run",
]  # fmt: skip
