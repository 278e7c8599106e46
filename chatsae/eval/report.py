"""Showing evaluation results: a rich table of metrics by token subset and a few summary lines."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from ..data.chat_template import render_chat, tokenizer_info
from .metrics import SUBSETS, TEMPLATE
from .result import EvalResult
from .robust import position0_norm_ratio

TABLE_ROWS: dict[str, str] = {
    "tokens": "tokens",
    "mse": "MSE (Eq. 7)",
    "log2_mse": "log2 MSE",
    "fvu": "FVU",
    "fvu_no_dominant": "FVU w/o dominant ch.",
    "fvu_standardized": "FVU per-ch. std.",
    "cosine_similarity": "cos(x, x̂)",
    "cosine_median": "median cos",
    "dominant_share": "dominant ch. share",
    "relative_norm": "‖x̂‖/‖x‖",
    "mean_sq_norm": "E‖x‖²",
    "l0": "L0",
    "dead_latents": "dead",
    "dense_latents": "dense",
    "ce_clean": "CE clean",
    "delta_ce": "ΔCE",
    "kl": "KL",
    "ce_recovered": "CE recovered",
}
"""Metrics shown in the table (key -> row label), in order; the JSON file has them all."""

SUBSET_LABELS = {
    "all_no_pos0": "no pos0",
    "special_no_pos0": "special no pos0",
    "special_strict": "strict",
    "special_strict_no_pos0": "strict no pos0",
    "special_prefix": "system block",
    "special_turns": "turns",
}


TABLE_SUBSETS = tuple(s for s in SUBSETS if s not in ("special_prefix", "special_turns"))
"""The table's columns; the template set's two parts are a line of :func:`summary_lines` (and in the JSON file)."""


def fmt(value: Any) -> str:
    """A table cell: ints as is, floats with 4 significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}".replace("e-0", "e-").replace("e+0", "e")
    return str(value)


def metrics_table(result: EvalResult, rows: dict[str, str] = TABLE_ROWS) -> Table:
    """Metrics (rows) by token subset (columns); subsets without tokens are left out."""
    subsets = [s for s in TABLE_SUBSETS if (result.metrics.get(s) or {}).get("tokens")]
    s = result.setup
    title = f"{s.get('hook')} · {s.get('method')} · {s.get('sequences')} sequences · {s.get('tokens')} tokens"
    table = Table(title=title, title_style="bold", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    table.add_column("metric", no_wrap=True)
    for name in subsets:
        table.add_column(SUBSET_LABELS.get(name, name), justify="right")
    for key, label in rows.items():
        table.add_row(label, *(fmt(result.metrics[name].get(key)) for name in subsets))
    return table


def summary_lines(result: EvalResult) -> list[str]:
    """A few plain lines: the headline numbers, the latent counts and the firing-frequency histogram."""
    h = result.headline
    lat = result.latents
    hist = lat.get("firing_histogram", {})
    edges, counts = hist.get("log10_bin_edges", []), hist.get("counts", [])
    bins = " ".join(f"[{edges[i]:g},{edges[i + 1]:g}):{c}" for i, c in enumerate(counts) if c)
    ratio = position0_norm_ratio(result.metrics)
    p0 = "-" if ratio is None else f"{ratio:,.4g}x"
    return [
        f"log2 MSE {fmt(h['log2_mse'])}  log2 MSE_st {fmt(h['log2_mse_st'])}  (without position 0: "
        f"{fmt(h['log2_mse_no_pos0'])} / {fmt(h['log2_mse_st_no_pos0'])}); MSE_st = template set, strict set "
        f"(special tokens only): {fmt(h['log2_mse_st_strict'])} (without position 0 "
        f"{fmt(h['log2_mse_st_strict_no_pos0'])}); template set without position 0 by part: system block "
        f"{fmt(h.get('log2_mse_st_prefix'))}, around the turns {fmt(h.get('log2_mse_st_turns'))}",
        f"FVU {fmt(h['fvu'])} (without position 0 {fmt(h['fvu_no_pos0'])})  L0 {fmt(h['l0'])}  "
        f"delta CE {fmt(h['delta_ce'])}  KL {fmt(h['kl'])}  CE recovered {fmt(h['ce_recovered'])}",
        f"latents {lat.get('d_sae')}: dead {lat.get('dead')}, dense (> {result.setup.get('dense_threshold')}) "
        f"{lat.get('dense')}",
        f"log10 firing frequency histogram: {bins or '-'}",
        f"robust (without position 0): median cosine {fmt(h.get('cosine_median_no_pos0'))}, FVU without the dominant "
        f"channels {fmt(h.get('fvu_no_dominant_no_pos0'))}, per-channel standardised FVU "
        f"{fmt(h.get('fvu_standardized_no_pos0'))}; position-0 squared norm {p0} the other tokens' (measured)",
        *(f"WARNING: {w}" for w in result.warnings()),
    ]


EXAMPLE_CHAT = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
"""The conversation of the example tokenisation in docs/metrics.md ("MSE_st: strict and template sets")."""


def token_sets_example(tokenizer: Any, messages: list[dict[str, str]] = EXAMPLE_CHAT) -> str:
    """A Markdown table of ``messages`` rendered with the tokenizer's chat template: each token, its class and
    whether it is in the strict / template special set (position 0 marked), as docs/metrics.md shows it."""

    seq = render_chat(messages, tokenizer)
    strict = tokenizer_info(tokenizer, chat=True).special_ids
    names = {0: "text", 1: "template", 2: "system", 3: "user", 4: "assistant"}
    rows = []
    for pos, (tid, cls) in enumerate(zip(seq.input_ids, seq.token_class, strict=True)):
        piece = tokenizer.decode([tid]).replace("\n", "\\n").replace("|", "\\|")
        rows.append(
            f"| {pos} | `{piece}` | {names.get(cls, cls)} | {'x' if tid in strict else ''} | "
            f"{'x' if cls == TEMPLATE else ''} |"
        )
    head = ["| position | token | class | strict set | template set |", "|---:|---|---|:---:|:---:|"]
    return "\n".join(head + rows)


def print_report(result: EvalResult, console: Console | None = None) -> None:
    """Print the table and the summary lines."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # files and pipes: wide enough for every column, nothing cut
            console = Console(width=max(console.width, 130))
    console.print(metrics_table(result))
    for line in summary_lines(result):
        console.print(line, highlight=False, markup=False)
