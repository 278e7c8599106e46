"""How a study's reports are written: method and architecture labels, labels and units of the summary numbers,
table cells and Markdown tables, report dates, and text files written atomically (never over a file chatsae did not
write)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.ownership import check_replace
from ..core.utils import atomic_file
from ..data.methods import METHODS
from ..eval.report import fmt

METHOD_LABELS: dict[str, str] = {m.name: m.label for m in METHODS.values()}
ARCH_LABELS = {
    "standard": "Standard",
    "jumprelu": "JumpReLU",
    "topk": "TopK",
    "gated": "Gated",
    "batchtopk": "BatchTopK",
    "matryoshka": "Matryoshka",
}
LABELS = {
    "log2_mse": ("log2 MSE", "log2 of activation units²"),
    "log2_mse_st": ("log2 MSE_st", "log2 of activation units²"),
    "log2_mse_st_strict": ("log2 MSE_st strict", "log2 of activation units²"),
    "log2_mse_st_prefix": ("log2 MSE_st system block", "log2 of activation units²"),
    "log2_mse_st_turns": ("log2 MSE_st turns", "log2 of activation units²"),
    "mse": ("MSE", "activation units²"),
    "l0": ("L0", "active latents per token"),
    "fvu": ("FVU", "fraction of variance unexplained"),
    "delta_lm_loss": ("ΔLM loss", "nats per token"),
    "ce_recovered": ("CE recovered", "fraction"),
    "kl": ("KL", "nats per token"),
    "dead_fraction": ("dead latents", "fraction"),
    "freq_gt_10pct": ("latents on >= 10% of tokens", "fraction"),
    "freq_gt_1pct": ("latents on >= 1% of tokens", "fraction"),
}
"""Summary key (without ``_no_pos0``) -> (label, unit)."""


def label(key: str) -> str:
    """``"fvu_no_pos0"`` -> ``"FVU (no pos 0)"``."""
    base = key.removesuffix("_no_pos0")
    return LABELS.get(base, (base, ""))[0] + (" (no pos 0)" if key != base else "")


def unit(key: str) -> str:
    """``"delta_lm_loss"`` -> ``"nats per token"``."""
    return LABELS.get(key.removesuffix("_no_pos0"), ("", ""))[1]


def cell(v: Any, bold: bool = False) -> str:
    """A table cell: a number with 4 significant digits (bold if asked), '-' for a missing value."""

    text = fmt(v) if isinstance(v, (int, float)) and v == v else "-"
    return f"**{text}**" if bold and text != "-" else text


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (first column left-aligned, the others right-aligned)."""
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_texts(files: dict[Path, str]) -> list[Path]:
    """Write each text file atomically (none replaces a file chatsae did not write: checked first); returns the
    paths."""
    for path in files:
        check_replace(path, "--out-dir")
    for path, text in files.items():
        with atomic_file(path, "w") as fh:
            fh.write(text)
    return list(files)


def now() -> str:
    """The current UTC time, ISO 8601 to the second (report dates)."""

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
