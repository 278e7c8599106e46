"""``EvalResult``: the typed output of an evaluation, its JSON form (schema in docs/metrics.md) and file IO."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..core.utils import atomic_file
from .metrics import SUBSETS
from .robust import fidelity_warnings, position0_norm_ratio

SCHEMA_VERSION = 3
"""2: ``per_sequence`` sums and the strict special subsets (``special_strict*``) added; 3: the template set split
into ``special_prefix`` (the system block) and ``special_turns``."""
HEADLINE = {
    # headline key: (subset, metric)
    "mse": ("all", "mse"),
    "mse_st": ("special", "mse"),
    "mse_st_strict": ("special_strict", "mse"),
    "log2_mse": ("all", "log2_mse"),
    "log2_mse_st": ("special", "log2_mse"),
    "log2_mse_st_strict": ("special_strict", "log2_mse"),
    "log2_mse_no_pos0": ("all_no_pos0", "log2_mse"),
    "log2_mse_st_no_pos0": ("special_no_pos0", "log2_mse"),
    "log2_mse_st_strict_no_pos0": ("special_strict_no_pos0", "log2_mse"),
    "log2_mse_st_prefix": ("special_prefix", "log2_mse"),
    "log2_mse_st_turns": ("special_turns", "log2_mse"),
    "fvu": ("all", "fvu"),
    "fvu_no_pos0": ("all_no_pos0", "fvu"),
    "cosine_similarity": ("all", "cosine_similarity"),
    "cosine_median_no_pos0": ("all_no_pos0", "cosine_median"),
    "fvu_no_dominant_no_pos0": ("all_no_pos0", "fvu_no_dominant"),
    "fvu_standardized_no_pos0": ("all_no_pos0", "fvu_standardized"),
    "l0": ("all", "l0"),
    "dead_fraction": ("all", "dead_fraction"),
    "dense_fraction": ("all", "dense_fraction"),
    "delta_ce": ("all", "delta_ce"),
    "kl": ("all", "kl"),
    "ce_recovered": ("all", "ce_recovered"),
}
"""The few numbers a comparison table shows, each taken from ``metrics[subset][metric]``. ``mse_st`` is the template
set (``special``); ``mse_st_strict`` the tokenizer's special tokens only (docs/metrics.md, "MSE_st")."""

TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    # (label, subset, metric): first the tokens the SAE trains on (no position 0), then with position 0; a row
    # without a subset is a section header whose text is in SECTION_NOTES
    ("held-out eval, position 0 excluded", "", ""),
    ("eval L0", "all_no_pos0", "l0"),
    ("eval fvu", "all_no_pos0", "fvu"),
    ("eval mse", "all_no_pos0", "mse"),
    ("eval log2 mse", "all_no_pos0", "log2_mse"),
    ("eval log2 mse_st", "special_no_pos0", "log2_mse"),
    ("eval log2 mse_st strict", "special_strict_no_pos0", "log2_mse"),
    ("eval cosine", "all_no_pos0", "cosine_similarity"),
    ("eval cosine median", "all_no_pos0", "cosine_median"),
    ("eval fvu without dominant channels", "all_no_pos0", "fvu_no_dominant"),
    ("eval fvu per-channel standardised", "all_no_pos0", "fvu_standardized"),
    ("eval delta CE", "all", "delta_ce"),
    ("eval KL", "all", "kl"),
    ("eval CE recovered", "all", "ce_recovered"),
    ("eval dead fraction", "all", "dead_fraction"),
    ("with position 0 (attention sink)", "", ""),
    ("eval mse (pos 0 incl.)", "all", "mse"),
    ("eval fvu (pos 0 incl.)", "all", "fvu"),
    ("eval log2 mse (pos 0 incl.)", "all", "log2_mse"),
    ("eval log2 mse_st (pos 0 incl.)", "special", "log2_mse"),
)
"""The rows of ``chatsae train``'s final table."""
SECTION_NOTES = {
    "held-out eval, position 0 excluded": "the tokens the SAE was trained on (LM-loss rows: the splice as trained)",
    "with position 0 (attention sink)": "position 0 (squared norm {ratio} the other tokens', measured on this "
    "evaluation) is not trained on; where it is an attention sink, one such token per sequence dominates MSE and FVU "
    "when included",
}
"""Section notes; ``{ratio}``: the measured position-0 norm ratio (:func:`chatsae.eval.robust.position0_norm_ratio`)."""
WARN_SUBSETS = {"all_no_pos0": "no pos 0", "all": "pos 0 incl."}
"""Subsets whose FVU is checked against the robust measures in the summary (:meth:`EvalResult.warnings`)."""


@dataclass
class EvalResult:
    """What :func:`evaluate` returns; ``to_dict()`` is the JSON schema documented in docs/metrics.md."""

    sae: dict[str, Any]
    """architecture, d_in, d_sae, k, path (when known), metadata."""
    setup: dict[str, Any]
    """model, hook, method, data, holdout, sequences, tokens, lm_loss, splice_first_position, seconds, ..."""
    metrics: dict[str, dict[str, Any]]
    """``{subset: {metric: value}}`` for every subset of ``chatsae.eval.metrics.SUBSETS``."""
    latents: dict[str, Any] = field(default_factory=dict)
    """d_sae, dead/dense counts and fractions on all tokens, log10 firing-frequency histogram."""
    per_sequence: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """``{subset: {name: [S] sums}}`` per evaluated sequence (``SubsetAccumulator.per_sequence``), for bootstrap
    intervals (:mod:`chatsae.eval.stats`); rounded to 7 significant digits (so a result read back from its file
    gives the same intervals), subsets without tokens left out; empty in files written before schema 2."""

    def __post_init__(self) -> None:
        self.per_sequence = {k: _round(v) for k, v in self.per_sequence.items() if any(v.get("n") or [])}

    def is_current(self) -> bool:
        """Written by this version's evaluation: per-sequence sums (intervals) and every subset of
        ``chatsae.eval.metrics.SUBSETS`` present (a study re-evaluates an older result instead of reusing it)."""
        return bool(self.per_sequence) and all(s in self.metrics for s in SUBSETS)

    @property
    def headline(self) -> dict[str, Any]:
        return {k: self.metrics.get(s, {}).get(m) for k, (s, m) in HEADLINE.items()}

    def table_rows(self) -> dict[str, str]:
        """:data:`TABLE_ROWS` formatted for a two-column summary table (label -> text): the metrics on the tokens
        the SAE was trained for (no position 0) first, then a labelled block with position 0 included."""
        ratio = position0_norm_ratio(self.metrics)
        measured = "not measured" if ratio is None else f"{ratio:,.4g}x"
        rows = {}
        for name, subset, metric in TABLE_ROWS:
            v = json_safe(self.metrics.get(subset, {}).get(metric)) if subset else None
            note = SECTION_NOTES[name].format(ratio=measured) if not subset else ""
            rows[name] = note if not subset else "-" if v is None else f"{v:.4g}"
        for i, line in enumerate(self.warnings(), 1):
            rows[f"WARNING {i}"] = line
        return rows

    def warnings(self) -> list[str]:
        """Where FVU disagrees with the robust measures, and the dominant channels, on :data:`WARN_SUBSETS`
        (:func:`chatsae.eval.robust.fidelity_warnings`)."""
        return [w for s, where in WARN_SUBSETS.items() for w in fidelity_warnings(self.metrics.get(s) or {}, where)]

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema_version": SCHEMA_VERSION,
            "headline": self.headline,
            "sae": self.sae,
            "setup": self.setup,
            "metrics": self.metrics,
            "latents": self.latents,
            "per_sequence": self.per_sequence,
        }
        return json_safe(out)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        missing = [k for k in ("sae", "setup", "metrics") if k not in d]
        if missing:
            raise ValueError(f"not a chatsae eval result: missing key(s) {missing}")
        return cls(d["sae"], d["setup"], d["metrics"], d.get("latents", {}), d.get("per_sequence", {}))


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN); tensors and numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Tensor):
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


_NUMBER_LIST = re.compile(r"\[\s+((?:-?[0-9.eE+-]+|null)(?:,\s+(?:-?[0-9.eE+-]+|null))*)\s+\]")


def dumps(obj: Any) -> str:
    """Indented JSON with every list of numbers on one line (per-sequence sums stay compact)."""
    return _NUMBER_LIST.sub(
        lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", json.dumps(obj, indent=2)
    )


def _round(obj: Any, digits: int = 7) -> Any:
    """Floats to ``digits`` significant digits, whole numbers to ints (per-sequence sums: float32 precision)."""
    if isinstance(obj, dict):
        return {k: _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v, digits) for v in obj]
    if isinstance(obj, float) and obj == obj and abs(obj) != float("inf"):
        return int(obj) if obj.is_integer() else float(f"{obj:.{digits}g}")
    return obj


def write_result(result: EvalResult, path: str | Path) -> Path:
    """Write ``result.to_dict()`` as indented JSON to ``path`` (atomically), lists of numbers on one line each."""
    path = Path(path)
    with atomic_file(path, "w") as fh:
        fh.write(dumps(result.to_dict()) + "\n")
    return path


def read_result(path: str | Path) -> EvalResult:
    """Read a JSON file written by :func:`write_result`, with a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such evaluation result")
    try:
        return EvalResult.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: {e}") from e
