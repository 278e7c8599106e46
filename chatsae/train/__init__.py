"""Training: config, schedules, data-dependent initialisation, the training state and the trainer."""

from .config import TrainConfig
from .init import geometric_median, input_scale
from .steplog import StepMetrics
from .trainer import Trainer, TrainResult

__all__ = ["StepMetrics", "TrainConfig", "TrainResult", "Trainer", "geometric_median", "input_scale"]
