"""The report of ``chatsae compare`` (:mod:`chatsae.workflows.compare`): the paper's tables, intervals, verdict
lines, charts and the ``report.md`` / ``report.json`` files, from the report dictionary the comparison builds
(``results[set][method][arch]``: the :data:`~chatsae.workflows.study.SUMMARY` numbers with their intervals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.ownership import check_replace
from ..eval import stats
from ..eval.plots import BarPanel, bar_chart
from ..eval.result import dumps
from .study import (
    ARCH_LABELS,
    CLASS_METRICS,
    CLASS_SUBSETS,
    METHOD_LABELS,
    cell,
    label,
    md_table,
    unit,
    write_texts,
)


def interval_text(row: dict[str, Any], key: str) -> str:
    """``"0.647 [0.60, 0.69]; seeds [0.61, 0.68]"``: the mean, the bootstrap over sequences, the t over seeds."""
    iv = (row.get("intervals") or {}).get(key) or {}
    parts = [cell(row.get(key))]
    if iv.get("sequences"):
        parts.append("[" + ", ".join(cell(v) for v in iv["sequences"]) + "]")
    if iv.get("seeds"):
        parts.append("; seeds [" + ", ".join(cell(v) for v in iv["seeds"]) + "]")
    return " ".join(parts).replace(" ;", ";")


def error_bounds(row: dict[str, Any], key: str) -> tuple[float, float] | None:
    """The widest of the row's intervals for ``key`` (sequences, seeds), for error bars; None if it has none."""
    iv = (row.get("intervals") or {}).get(key) or {}
    bounds = [b for b in (iv.get("sequences"), iv.get("seeds")) if b]
    return (min(b[0] for b in bounds), max(b[1] for b in bounds)) if bounds else None


def verdict_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    """One line per verdict: the sentence, then the difference (log2 for MSEs) with its 95% intervals."""
    out = []
    for v in verdicts:
        iv = (
            "; ".join(
                f"{what} [{cell(b[0])}, {cell(b[1])}]"
                for what, b in (("over sequences", v["sequences"]), ("over seeds", v["seeds"]))
                if b
            )
            or "no interval"
        )
        why = f"; {v['why']}" if v.get("why") else ""
        out.append(
            f"- {ARCH_LABELS.get(v['arch'], v['arch'])}: {v['verdict']} (difference {label(v['metric'])} "
            f"{cell(v['difference'])}; 95% interval {iv}{why})."
        )
    return out


BEST_METRICS = {
    "log2_mse_st": "MSE_st",
    "log2_mse": "MSE",
    "log2_mse_st_no_pos0": "MSE_st without position 0",
    "log2_mse_no_pos0": "MSE without position 0",
}
"""Metrics (lower is better) the report names a best method for."""


def best_methods(results: dict[str, dict[str, dict[str, Any]]], metric: str) -> dict[str, str | None]:
    """``results[method][arch][metric]`` -> ``{arch: method with the lowest value}`` (None where no method has a
    value; the first method listed wins a tie)."""
    archs = list(dict.fromkeys(a for per_arch in results.values() for a in per_arch))
    best: dict[str, str | None] = {}
    for arch in archs:
        scored = [
            (v, m)
            for m, per_arch in results.items()
            if isinstance(v := (per_arch.get(arch) or {}).get(metric), (int, float)) and v == v
        ]
        best[arch] = min(scored, key=lambda t: t[0])[1] if scored else None
    return best


def paper_table(results: dict[str, dict[str, dict[str, Any]]], keys: tuple[str, ...]) -> str:
    """The paper's layout: rows = methods, column groups = architectures with ``keys`` each; per column the
    lowest value is in bold."""
    archs = list(dict.fromkeys(a for per_arch in results.values() for a in per_arch))
    best = {(a, k): best_methods(results, k).get(a) for a in archs for k in keys}
    headers = ["Method"] + [f"{ARCH_LABELS.get(a, a)}: {label(k)}" for a in archs for k in keys]
    rows = [
        [METHOD_LABELS.get(m, m)] + [cell(per_arch.get(a, {}).get(k), best[(a, k)] == m) for a in archs for k in keys]
        for m, per_arch in results.items()
    ]
    return md_table(headers, rows)


def best_lines(results: dict[str, dict[str, dict[str, Any]]], metrics: dict[str, str] = BEST_METRICS) -> list[str]:
    """One sentence per architecture: which method is lowest on each metric, with every method's value (point values,
    not findings: only :func:`method_verdicts` states a difference)."""
    archs = list(dict.fromkeys(a for per_arch in results.values() for a in per_arch))
    out = []
    for arch in archs:
        parts = []
        for metric, name in metrics.items():
            winner = best_methods(results, metric).get(arch)
            if winner is None:
                continue
            others = ", ".join(
                f"{METHOD_LABELS.get(m, m)} {cell(r.get(arch, {}).get(metric))}"
                for m, r in results.items()
                if m != winner
            )
            value = cell(results[winner][arch][metric])
            parts.append(
                f"lowest on {name}: **{METHOD_LABELS.get(winner, winner)}** ({label(metric)} {value}; {others})"
            )
        out.append(f"- {ARCH_LABELS.get(arch, arch)}: " + ("; ".join(parts) or "no values") + ".")
    return out


FIDELITY = (
    "l0",
    "l0_no_pos0",
    "fvu",
    "fvu_no_pos0",
    "delta_lm_loss",
    "delta_lm_loss_no_pos0",
    "ce_recovered",
    "ce_recovered_no_pos0",
)


KL = ("kl", "kl_no_pos0")
CLASS_NOTE = (
    "FVU, KL to the clean model and delta LM loss on the positions of each token class: chat-template tokens "
    "(without position 0), system prompt, user and assistant content. KL measures how far the spliced "
    "model's predictions move; delta LM loss can be negative where the reconstruction makes the actual "
    "next token more likely (e.g. a fixed system prompt), so read both."
)

TEMPLATE_PART_NOTE = (
    "The template tokens of the system block (before the first user token: with one fixed system prompt, the same "
    "tokens after the same prefix in every sample) apart from those around the turns (after it)."
)


INTERVAL_SHOW = (
    "log2_mse",
    "log2_mse_st",
    "log2_mse_st_strict",
    "log2_mse_no_pos0",
    "log2_mse_st_no_pos0",
    "log2_mse_st_prefix",
    "log2_mse_st_turns",
    "l0_no_pos0",
    "fvu_no_pos0",
    "delta_lm_loss",
    "ce_recovered",
)


def interval_table(results: dict[str, dict[str, dict[str, Any]]], keys: tuple[str, ...] = INTERVAL_SHOW) -> str:
    """Rows method x architecture; per metric the mean with its intervals (:func:`interval_text`)."""
    rows = [
        [METHOD_LABELS.get(m, m), ARCH_LABELS.get(a, a), *(interval_text(v, k) for k in keys)]
        for m, per_arch in results.items()
        for a, v in per_arch.items()
    ]
    return md_table(["Method", "SAE", *(label(k) for k in keys)], rows)


def class_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Rows method x architecture; per token class of :data:`CLASS_SUBSETS`: FVU, KL, delta LM loss."""
    keys = [(cls, key) for cls in CLASS_SUBSETS for key in CLASS_METRICS]
    headers = ["Method", "SAE", *(f"{cls}: {label(key)}" for cls, key in keys)]
    rows = [
        [METHOD_LABELS.get(m, m), ARCH_LABELS.get(a, a), *(cell(v.get(f"{key}_{cls}")) for cls, key in keys)]
        for m, per_arch in results.items()
        for a, v in per_arch.items()
    ]
    return md_table(headers, rows)


def compare_figures(
    results: dict[str, dict[str, dict[str, Any]]], out_dir: Path, suffix: str, title: str
) -> list[Path]:
    """``mse{suffix}.png`` (log2 MSE / MSE_st, with and without position 0) and ``metrics{suffix}.png`` (L0, FVU,
    delta LM loss, CE recovered; left with, right without position 0): bars grouped by method, one per architecture."""

    def panel(k: str) -> BarPanel:
        values = {
            METHOD_LABELS.get(m, m): {ARCH_LABELS.get(a, a): v.get(k) for a, v in per_arch.items()}
            for m, per_arch in results.items()
        }
        errors = {
            METHOD_LABELS.get(m, m): {ARCH_LABELS.get(a, a): error_bounds(v, k) for a, v in per_arch.items()}
            for m, per_arch in results.items()
        }
        log2 = k.startswith("log2")
        return BarPanel(
            label(k) + (" (lower is better)" if log2 else ""),
            f"{label(k).split(' (')[0]} ({unit(k)})",
            values,
            from_zero=not log2,
            errors=errors,
        )

    def panels(keys: tuple[str, ...]) -> list[BarPanel]:
        return [panel(k) for k in keys]

    mse_keys = ("log2_mse", "log2_mse_st", "log2_mse_no_pos0", "log2_mse_st_no_pos0")
    return [
        bar_chart(panels(mse_keys), out_dir / f"mse{suffix}.png", f"Reconstruction error, {title}", "SAE"),
        bar_chart(panels(FIDELITY), out_dir / f"metrics{suffix}.png", f"Sparsity and fidelity, {title}", "SAE"),
    ]


def compare_markdown(report: dict[str, Any], figures: dict[str, list[str]]) -> str:
    """report.md from the content of report.json and the figure file names of each evaluation set."""
    s = report["setup"]
    lines = [
        "# FAST comparison: BT(P) vs BT(F) vs FAST",
        "",
        f"- model: `{s['model']}`, hook `{s['hook']}`, d_in {s['d_in']}, width {s['d_sae']} "
        f"({s['d_sae'] / max(s['d_in'], 1):g}x)",
        f"- token budget: {s['total_tokens']:,} tokens per SAE (batch {s['batch_size']}, lr {s['lr']:g}, seed "
        f"{s['seed']}); sparsity coefficients {s['sparsity_coefs']}" + (f", TopK k {s['k']}" if s["k"] else ""),
        f"- data: instruction `{s['instruct_data']}` (BT(F), FAST; {s['holdout']} records held out with seed "
        f"{s['holdout_seed']}), plain text `{s['pretrain_data']}` (BT(P)); FAST max_length {s['max_length']}, "
        f"block context_size {s['context_size']}, dedup n {s['dedup_n']}",
        f"- date: {s['date']}",
        f"- command: `{s['command']}`",
        "",
        md_table(
            ["Method", "data", "cached vectors", "passes at budget"],
            [
                [METHOD_LABELS.get(m, m), f"`{c['data']}`", f"{c['vectors']:,}", f"{c['passes']:.2f}"]
                for m, c in report["caches"].items()
            ],
        ),
        "",
        "Every SAE is evaluated the same way, as the FAST paper does: each record rendered with the chat template and "
        "fed on its own. MSE is FAST Eq. 7 (averaged per sequence first) in raw activation units; MSE_st is the same "
        "on the template set (the tokenizer's special tokens, role names and the template's newlines), MSE_st "
        "strict on the tokenizer's special tokens only; tables show log2 (lower is better). Position 0 (the "
        "attention sink) is kept clean in the spliced forward pass; 'no pos 0' columns leave it out of the metric "
        "(docs/metrics.md).",
        "",
        f"Intervals are {100 * s['intervals']['level']:g}%: `[low, high]` is a percentile bootstrap over the "
        f"evaluation sequences ({s['intervals']['n_boot']} resamples; every SAE is evaluated on the same sequences, "
        f"so differences are paired per sequence), `seeds [low, high]` a t-interval over the {len(s['seeds'])} "
        f"training seeds (shown with 2 or more). A difference is stated as a finding only with {stats.MIN_SEEDS} or "
        "more seeds and when both intervals of the paired difference (over sequences and over seeds) exclude 0 and "
        f"neither has zero width; otherwise the verdict is '{stats.NO_VERDICT}'. 'Lowest on' lines and bold cells "
        "name the lowest point value, not a finding.",
    ]
    for name, es in report["eval_sets"].items():
        res = report["results"][name]
        lines += [
            "",
            f"## Evaluation on {es['label']}",
            "",
            "### log2 MSE and log2 MSE_st (paper layout)",
            "",
            paper_table(res, ("log2_mse", "log2_mse_st")),
            "",
            *best_lines(res),
            "",
            "### Without position 0",
            "",
            paper_table(res, ("log2_mse_no_pos0", "log2_mse_st_no_pos0")),
            "",
            "### MSE_st by template part (without position 0)",
            "",
            TEMPLATE_PART_NOTE,
            "",
            paper_table(res, ("log2_mse_st_prefix", "log2_mse_st_turns")),
            "",
            "### Sparsity and fidelity",
            "",
            md_table(
                ["Method", "SAE", *(label(k) for k in FIDELITY + KL)],
                [
                    [METHOD_LABELS.get(m, m), ARCH_LABELS.get(a, a), *(cell(v.get(k)) for k in FIDELITY + KL)]
                    for m, per_arch in res.items()
                    for a, v in per_arch.items()
                ],
            ),
            "",
            "### By token class",
            "",
            CLASS_NOTE,
            "",
            class_table(res),
            "",
            "### Intervals (mean over seeds, 95%)",
            "",
            interval_table(res),
            "",
            "### Verdicts (paired differences, A − B)",
            "",
            *verdict_lines(report.get("verdicts", {}).get(name, [])),
            "",
            *(f"![{Path(f).stem}]({f})" for f in figures.get(name, [])),
        ]
    return "\n".join(lines) + "\n"


def write_compare_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write report.json, the charts of every evaluation set and report.md; returns their paths."""
    figures: dict[str, list[str]] = {}
    files = []
    for i, name in enumerate(report["eval_sets"]):
        for stem in ("mse", "metrics"):
            check_replace(out_dir / f"{stem}{'' if i == 0 else f'_{name}'}.png", "--out-dir")
    for path in ("report.json", "report.md"):
        check_replace(out_dir / path, "--out-dir")
    for i, (name, es) in enumerate(report["eval_sets"].items()):
        paths = compare_figures(report["results"][name], out_dir, "" if i == 0 else f"_{name}", es["label"])
        figures[name] = [p.name for p in paths]
        files += paths
    report = {**report, "figures": figures}
    return files + write_texts(
        {out_dir / "report.json": dumps(report) + "\n", out_dir / "report.md": compare_markdown(report, figures)}
    )
