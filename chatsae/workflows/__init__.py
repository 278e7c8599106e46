"""Workflows: what strings harvest -> train -> evaluate together. One training run (``train_run``), several SAEs
from one pass (``multi_sae``), the FAST-vs-block-training studies (``study``, ``compare``, ``sweep``) and the
steering-quality study (``steering_quality``). The top layer under ``cli``: nothing below imports it."""

from .train_run import RunConfig, RunResult, RunSpec, train_run

__all__ = ["RunConfig", "RunResult", "RunSpec", "train_run"]
