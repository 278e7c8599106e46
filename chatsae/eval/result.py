"""``EvalResult``: the typed output of an evaluation, its JSON form (schema in docs/metrics.md) and file IO."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..utils import atomic_file

SCHEMA_VERSION = 1
HEADLINE = {
    # headline key: (subset, metric)
    "mse": ("all", "mse"),
    "mse_st": ("special", "mse"),
    "log2_mse": ("all", "log2_mse"),
    "log2_mse_st": ("special", "log2_mse"),
    "log2_mse_no_pos0": ("all_no_pos0", "log2_mse"),
    "log2_mse_st_no_pos0": ("special_no_pos0", "log2_mse"),
    "fvu": ("all", "fvu"),
    "fvu_no_pos0": ("all_no_pos0", "fvu"),
    "cosine_similarity": ("all", "cosine_similarity"),
    "l0": ("all", "l0"),
    "dead_fraction": ("all", "dead_fraction"),
    "dense_fraction": ("all", "dense_fraction"),
    "delta_ce": ("all", "delta_ce"),
    "kl": ("all", "kl"),
    "ce_recovered": ("all", "ce_recovered"),
}
"""The few numbers a comparison table shows, each taken from ``metrics[subset][metric]``."""


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

    @property
    def headline(self) -> dict[str, Any]:
        return {k: self.metrics.get(s, {}).get(m) for k, (s, m) in HEADLINE.items()}

    def table_rows(self) -> dict[str, str]:
        """The headline numbers formatted for a two-column summary table (label -> text)."""
        return {f"eval {k}": "-" if v is None else f"{v:.4g}" for k, v in _json_safe(self.headline).items()}

    def to_dict(self) -> dict[str, Any]:
        out = {"schema_version": SCHEMA_VERSION, "headline": self.headline, "sae": self.sae, "setup": self.setup,
               "metrics": self.metrics, "latents": self.latents}  # fmt: skip
        return _json_safe(out)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        missing = [k for k in ("sae", "setup", "metrics") if k not in d]
        if missing:
            raise ValueError(f"not a chatsae eval result: missing key(s) {missing}")
        return cls(d["sae"], d["setup"], d["metrics"], d.get("latents", {}))


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN); tensors and numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Tensor):
        return _json_safe(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


def write_result(result: EvalResult, path: str | Path) -> Path:
    """Write ``result.to_dict()`` as indented JSON to ``path`` (atomically)."""
    path = Path(path)
    with atomic_file(path, "w") as fh:
        json.dump(result.to_dict(), fh, indent=2)  # type: ignore[arg-type]
        fh.write("\n")  # type: ignore[attr-defined]
    return path


def read_result(path: str | Path) -> EvalResult:
    """Read a JSON file written by :func:`write_result`, with a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such evaluation result")
    try:
        return EvalResult.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
