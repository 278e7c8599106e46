"""Evaluation: metrics as pure tensor functions (``metrics``), streaming accumulators (``streaming``), the driver
(``evaluate``), typed results and their JSON (``result``) and tables (``report``). Formulas: docs/metrics.md."""

from .config import EvalConfig, resolve_config
from .evaluate import LMLosses, build_sequences, evaluate, select_records, spliced_losses
from .metrics import SUBSETS
from .report import metrics_table, print_report
from .result import HEADLINE, EvalResult, read_result, write_result
from .streaming import LMLossAccumulator, ReconstructionAccumulator, SparsityAccumulator, SubsetAccumulator

__all__ = [
    "HEADLINE",
    "SUBSETS",
    "EvalConfig",
    "EvalResult",
    "LMLossAccumulator",
    "LMLosses",
    "ReconstructionAccumulator",
    "SparsityAccumulator",
    "SubsetAccumulator",
    "build_sequences",
    "evaluate",
    "metrics_table",
    "print_report",
    "read_result",
    "resolve_config",
    "select_records",
    "spliced_losses",
    "write_result",
]
