"""Render the tables of docs/results/*/README.md from the committed JSON files beside them.

Each generated table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in its README; this script
rewrites those blocks (``--check``: exit 1 and name the READMEs whose blocks differ, writing nothing). Verdict cells
are recomputed with the current rule (:func:`chatsae.eval.stats.verdict_gate`: 3+ seeds and intervals over sequences
and seeds that exclude 0 and are not degenerate) from the intervals the JSON holds. tests/test_results_docs.py
checks that the committed READMEs equal the rendered ones.

    python scripts/results/render_tables.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chatsae.eval import stats

ROOT = Path(__file__).resolve().parents[2] / "docs" / "results"
METHODS = {"bt-p": "BT(P)", "bt-f": "BT(F)", "fast": "FAST"}
ARCHS = {"standard": "Standard", "jumprelu": "JumpReLU"}
SETS = {"heldout": "alpaca", "gsm8k_train": "gsm8k"}


def load(rel: str) -> Any:
    return json.loads((ROOT / rel).read_text())


def num(v: Any, digits: int = 3) -> str:
    """A figure with ``digits`` decimals (fewer for large ones), a true minus sign; a dash for None."""
    if v is None:
        return "-"
    v = float(v)
    text = f"{v:,.{digits if abs(v) < 10 else 1}f}"
    return text.replace("-", "−")


def interval(b: list[float] | None, digits: int = 3) -> str:
    return "" if not b else f" [{num(b[0], digits)}, {num(b[1], digits)}]"


def table(headers: list[str], rows: list[list[str]], right: int = 1, left: tuple[int, ...] = ()) -> str:
    """A Markdown table: the first ``right`` columns left-aligned, the rest right-aligned (``left``: the indices of
    columns left-aligned instead, overriding ``right``)."""
    align = ["---"] * right + ["---:"] * (len(headers) - right)
    if left:
        align = ["---" if i in left else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ---- compare/ ------------------------------------------------------------------------------------------------------
SEED_KEYS = ("l0_no_pos0", "log2_mse_no_pos0", "log2_mse_st_no_pos0", "fvu_no_pos0", "delta_lm_loss", "ce_recovered")
WITH_INTERVAL = {"log2_mse_no_pos0", "log2_mse_st_no_pos0", "delta_lm_loss"}


def compare_seeds(eval_set: str) -> Callable[[], str]:
    def render() -> str:
        res = load("compare/seeds/report.json")["results"][eval_set]
        rows = []
        for arch in ARCHS:
            for m in METHODS:
                r = res[m][arch]
                cells = []
                for k in SEED_KEYS:
                    iv = (r.get("intervals") or {}).get(k) or {}
                    digits = 1 if k == "l0_no_pos0" else 3
                    cells.append(num(r.get(k), digits) + (interval(iv.get("sequences")) if k in WITH_INTERVAL else ""))
                rows.append([METHODS[m], ARCHS[arch], *cells])
        headers = ["Method", "SAE", "L0", "log2 MSE", "log2 MSE_st", "FVU", "ΔLM loss", "CE recovered"]
        return table(headers, rows, right=2)

    return render


VERDICT_KEYS = {"log2_mse_no_pos0": "log2 MSE", "log2_mse_st_no_pos0": "log2 MSE_st", "delta_lm_loss": "ΔLM loss"}


def verdict_cell(v: dict[str, Any], n_seeds: int) -> str:
    def iv(b: list[float] | None) -> stats.Interval | None:
        return None if not b else stats.Interval(v["difference"], b[0], b[1], 0)

    why = stats.verdict_gate(n_seeds, iv(v.get("sequences")), iv(v.get("seeds")))
    diff = num(v["difference"])
    seeds = f"; seeds{interval(v.get('seeds'))}" if v.get("seeds") else ""
    if why:
        return f"{diff}{interval(v.get('sequences'))}{seeds}: no verdict ({why})"
    side = "lower" if v["sequences"][1] < 0 else "higher"
    return f"**{diff}**{interval(v.get('sequences'))}{seeds}: {METHODS[v['a']]} {side}"


def compare_verdicts() -> str:
    report = load("compare/seeds/report.json")
    n_seeds = len(report["setup"]["seeds"])
    rows = []
    for a, b in (("fast", "bt-f"), ("fast", "bt-p"), ("bt-f", "bt-p")):
        for arch in ("jumprelu", "standard"):
            for name, short in SETS.items():
                by_metric = {
                    v["metric"]: v
                    for v in report["verdicts"][name]
                    if v["arch"] == arch and v["a"] == a and v["b"] == b
                }
                pair = f"{ARCHS[arch]} {METHODS[a]} − {METHODS[b]}"
                rows.append([pair, short, *(verdict_cell(by_metric[k], n_seeds) for k in VERDICT_KEYS)])
    return table(["pair", "set", *VERDICT_KEYS.values()], rows, right=5)


def compare_single_seed() -> str:
    res = load("compare/report.json")["results"]["heldout"]
    rows = [
        [METHODS[m], *(num(res[m][a][k]) for a in ARCHS for k in ("log2_mse_no_pos0", "log2_mse_st_no_pos0"))]
        for m in METHODS
    ]
    headers = ["Method", *(f"{ARCHS[a]}: log2 {k}" for a in ARCHS for k in ("MSE", "MSE_st"))]
    return table(headers, rows)


def compare_single_seed_fidelity() -> str:
    res = load("compare/report.json")["results"]["heldout"]
    keys = ("l0_no_pos0", "fvu_no_pos0", "delta_lm_loss", "kl_no_pos0", "ce_recovered")
    rows = [
        [METHODS[m], ARCHS[a], *(num(res[m][a][k], 1 if k.startswith("l0") else 3) for k in keys)]
        for m in METHODS
        for a in ARCHS
    ]
    return table(["Method", "SAE", "L0", "FVU", "ΔLM loss", "KL", "CE recovered"], rows, right=2)


def compare_beta1_0() -> str:
    res = load("compare/report_jumprelu_beta1_0.json")["results"]
    keys = ("log2_mse_no_pos0", "log2_mse_st_no_pos0", "l0_no_pos0", "fvu_no_pos0", "delta_lm_loss", "kl_no_pos0")
    rows = [
        [f"{METHODS[m]}, {short}", *(num(res[s][m]["jumprelu"][k], 1 if k.startswith("l0") else 3) for k in keys)]
        + [num(res[s][m]["jumprelu"]["ce_recovered"])]
        for s, short in SETS.items()
        for m in METHODS
    ]
    headers = ["JumpReLU, β1 = 0", "log2 MSE", "log2 MSE_st", "L0", "FVU", "ΔLM loss", "KL", "CE recovered"]
    return table(headers, rows)


# ---- main_job/ -----------------------------------------------------------------------------------------------------
def main_job_figures() -> str:
    ev, ts = load("main_job/eval.json"), load("main_job/training_summary.json")
    a, s = ev["metrics"]["all_no_pos0"], ev["metrics"]["special_no_pos0"]
    held = [a["l0"], a["fvu"], a["log2_mse"], s["log2_mse"], a["delta_ce"], a["kl"], a["ce_recovered"]]
    rows = [
        [
            "training",
            f"{ts['tokens']:,} tokens, {ts['tokens_per_s']:,.0f} tok/s",
            "`training_summary.json` `tokens`, `tokens_per_s`",
        ],
        ["train L0 / FVU", f"{num(ts['train_l0'], 2)} / {num(ts['train_fvu'])}", "`training_summary.json`"],
        [
            "held-out, position 0 excluded: L0, FVU, log2 MSE, log2 MSE_st (template set), delta CE, KL, CE recovered",
            ", ".join(num(v, 2 if i == 0 else 3) for i, v in enumerate(held)),
            "`eval.json` `metrics.all_no_pos0`, `metrics.special_no_pos0`",
        ],
        ["evaluation time", f"{ev['setup']['seconds']:.0f} s", "`eval.json` `setup.seconds`"],
    ]
    return table(["what", "figure", "where in the files"], rows, right=3)


def main_job_rerun() -> str:
    runs = [("main_job/rerun_2", "this rerun"), ("main_job", "the clean-clone run above")]
    evs = [load(f"{d}/eval.json") for d, _ in runs]
    tss = [load(f"{d}/training_summary.json") for d, _ in runs]

    def held(ev: dict[str, Any]) -> str:
        m = ev["metrics"]
        return " / ".join(
            num(v) for v in (m["all_no_pos0"]["fvu"], m["all"]["delta_ce"], m["all"]["kl"], m["all"]["ce_recovered"])
        )

    rows = [
        [f"training ({tss[0]['tokens']:,} tokens)", *(f"{t['tokens_per_s']:,.0f} tok/s" for t in tss)],
        ["evaluation (`eval.json` `setup.seconds`)", *(f"{e['setup']['seconds']:.0f} s" for e in evs)],
        ["held-out FVU (no pos 0) / ΔLM loss / KL / CE recovered", *(held(e) for e in evs)],
    ]
    return table(["", *(name for _, name in runs)], rows, right=3)


# ---- compare_k/ and compare_varied/ (BatchTopK / Matryoshka, 3 seeds) ---------------------------------------------
K_ARCHS = {"batchtopk": "BatchTopK", "matryoshka": "Matryoshka"}
K_KEYS = {
    "log2_mse_no_pos0": "log2 MSE",
    "log2_mse_st_no_pos0": "log2 MSE_st",
    "log2_mse_st_prefix": "log2 MSE_st, system block",
    "log2_mse_st_turns": "log2 MSE_st, turns",
    "delta_lm_loss": "ΔLM loss",
}


def study_means(rel: str, eval_set: str, keys: tuple[str, ...]) -> Callable[[], str]:
    """Per architecture and method: held-out L0 (no position 0) and each of ``keys`` as the mean over seeds with the
    bootstrap interval over sequences."""

    def render() -> str:
        report = load(rel)
        res = report["results"][eval_set]
        rows = []
        for arch in (a for a in K_ARCHS if a in report["setup"]["archs"]):
            for m in METHODS:
                r = res[m][arch]
                cells = [num(r.get("l0_no_pos0"), 1)]
                for k in keys:
                    iv = (r.get("intervals") or {}).get(k) or {}
                    cells.append(num(r.get(k)) + interval(iv.get("sequences")))
                rows.append([K_ARCHS[arch], METHODS[m], *cells])
        return table(["SAE", "Method", "L0", *(K_KEYS[k] for k in keys)], rows, right=2)

    return render


def study_verdicts(rel: str, eval_set: str, keys: tuple[str, ...]) -> Callable[[], str]:
    """Paired differences A − B (mean over seeds, intervals over sequences and seeds) with the verdict of the current
    rule, per architecture and pair of methods."""

    def render() -> str:
        report = load(rel)
        n_seeds = len(report["setup"]["seeds"])
        rows = []
        for arch in (a for a in K_ARCHS if a in report["setup"]["archs"]):
            for a, b in (("fast", "bt-f"), ("fast", "bt-p"), ("bt-f", "bt-p")):
                by_metric = {
                    v["metric"]: v
                    for v in report["verdicts"][eval_set]
                    if v["arch"] == arch and v["a"] == a and v["b"] == b
                }
                rows.append(
                    [K_ARCHS[arch], f"{METHODS[a]} − {METHODS[b]}"]
                    + [verdict_cell(by_metric[k], n_seeds) for k in keys]
                )
        return table(["SAE", "pair", *(K_KEYS[k] for k in keys)], rows, right=2)

    return render


VARIED_KEYS = ("log2_mse_no_pos0", "log2_mse_st_no_pos0", "log2_mse_st_prefix", "log2_mse_st_turns")
"""compare_varied/ is evaluated without the LM loss."""


# ---- interp_matched/ -----------------------------------------------------------------------------------------------
def _proxies_seeds() -> Any:
    """scripts/results/proxies_seeds.py (beside this script; not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("proxies_seeds", Path(__file__).with_name("proxies_seeds.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def interp_matched(kind: str) -> Callable[[], str]:
    def render() -> str:
        mod = _proxies_seeds()
        return str(getattr(mod, f"{kind}_table")(load("interp_matched/proxies_seeds.json")))

    return render


# ---- sweep/ --------------------------------------------------------------------------------------------------------
SWEEP_ARCHS = {"jumprelu": "JumpReLU", "topk": "TopK", "standard": "Standard", "gated": "Gated"}


def fixed(v: float, digits: int, sign: bool = False) -> str:
    """``v`` with exactly ``digits`` decimals and a true minus sign (a plus sign too with ``sign``)."""
    return f"{v:{'+' if sign else ''},.{digits}f}".replace("-", "−")


def pct(v: float, digits: int = 1) -> str:
    """A share as a percentage; a bare 0 for none."""
    return "0" if v == 0 else f"{100 * v:.{digits}f}%"


def sweep_setting(r: dict[str, Any]) -> str:
    return f"λ {r['sparsity_coef']:g}" if r.get("k") is None else f"k {r['k']}"


def sweep_cells(r: dict[str, Any], l0_digits: int, lm_digits: int) -> list[str]:
    """L0 and FVU without position 0 and ΔLM loss (value [95% bootstrap over evaluation sequences]; TopK's L0 is set
    by k, so without one), the share of latents dead on the evaluation tokens and of those on >= 10% / 1% of them."""

    def cell(key: str, digits: int, with_interval: bool = True) -> str:
        b = (r["intervals"].get(key) or {}).get("sequences")
        iv = f" [{fixed(b[0], digits)}, {fixed(b[1], digits)}]" if b and with_interval else ""
        return fixed(r[key], digits) + iv

    return [
        cell("l0_no_pos0", l0_digits, r["arch"] != "topk"),
        cell("fvu_no_pos0", 3),
        cell("delta_lm_loss", lm_digits),
        pct(r["dead_fraction"]),
        pct(r["freq_gt_10pct"], 2),
        pct(r["freq_gt_1pct"]),
    ]


SWEEP_HEADERS = ["L0 (no pos 0)", "FVU (no pos 0)", "ΔLM loss", "dead", "on ≥ 10% of tokens", "on ≥ 1%"]


def sweep_rows(rel: str) -> list[dict[str, Any]]:
    """The held-out rows of a sweep report, by architecture (``SWEEP_ARCHS`` order) and then by L0."""
    rows = load(rel)["rows"]["heldout"]
    return sorted(rows, key=lambda r: (list(SWEEP_ARCHS).index(r["arch"]), r["l0_no_pos0"]))


def sweep_frontier(rel: str, l0_digits: int) -> Callable[[], str]:
    def render() -> str:
        rows = [[SWEEP_ARCHS[r["arch"]], sweep_setting(r), *sweep_cells(r, l0_digits, 3)] for r in sweep_rows(rel)]
        return table(["SAE", "setting", *SWEEP_HEADERS], rows, right=2)

    return render


def sweep_sites() -> str:
    rows = [
        [site, SWEEP_ARCHS[r["arch"]], sweep_setting(r), *sweep_cells(r, 1, 4)]
        for site in ("mlp_out", "attn_out")
        for r in sweep_rows(f"sweep/sites/{site}/report.json")
    ]
    return table(["site", "SAE", "setting", *SWEEP_HEADERS], rows, right=3)


def sweep_point(r: dict[str, Any], bold: bool = False) -> str:
    """ΔLM loss / FVU (no position 0) (L0 without position 0)."""
    figures = f"{fixed(r['delta_lm_loss'], 3)} / {fixed(r['fvu_no_pos0'], 3)}"
    return f"{f'**{figures}**' if bold else figures} ({fixed(r['l0_no_pos0'], 1)})"


def sweep_single_seed() -> str:
    """The first single-seed frontier (Adam β1 0.9 for all): each architecture's points by L0, in the columns of the
    nearest L0 (an architecture with fewer points fills the higher-L0 columns); bold: a column's lowest ΔLM loss."""
    columns = ["L0 ≈ 5", "L0 ≈ 10", "L0 ≈ 20", "L0 ≈ 38", "L0 ≈ 75"]
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for r in sweep_rows("sweep/report.json"):
        by_arch.setdefault(r["arch"], []).append(r)
    grid: dict[str, list[dict[str, Any] | None]] = {
        a: [None] * (len(columns) - len(rs)) + rs for a, rs in by_arch.items()
    }
    best = [
        min((p for g in grid.values() if (p := g[i])), key=lambda r: r["delta_lm_loss"]) for i in range(len(columns))
    ]
    rows: list[list[str]] = []
    for a, points in grid.items():
        label = f"{SWEEP_ARCHS[a]} ΔLM loss / FVU" if not rows else SWEEP_ARCHS[a]
        cells = ["" if p is None else sweep_point(p, p is best[i]) for i, p in enumerate(points)]
        rows.append([label, *cells])
    return table(["", *columns], rows)


def sweep_row(rel: str, arch: str, setting: str) -> dict[str, Any]:
    return next(r for r in load(rel)["rows"]["heldout"] if r["arch"] == arch and r["setting"] == setting)


def sweep_jumprelu_checks() -> str:
    """JumpReLU λ 0.002 and 0.006 at 300k tokens: the β1 0.9 defaults then, a 10× wider bandwidth, Adam β1 0; bold:
    the lowest ΔLM loss of a column."""
    runs = [
        ("defaults (Adam β1 0.9, bandwidth ε 0.001)", "sweep/report.json"),
        ("ε = 0.01 (`--jumprelu-bandwidth 0.01`)", "sweep/bandwidth_0.01_report.json"),
        ("β1 = 0 (`--beta1 0`, Gemma Scope's Adam setting)", "sweep/beta1_0_report.json"),
    ]
    settings = ("lambda=0.002", "lambda=0.006")
    points = [[sweep_row(rel, "jumprelu", s) for s in settings] for _, rel in runs]
    best = [min(range(len(runs)), key=lambda i: points[i][j]["delta_lm_loss"]) for j in range(len(settings))]
    rows = []
    for i, (label, _) in enumerate(runs):
        cells = []
        for j, r in enumerate(points[i]):
            cell = " / ".join((fixed(r["l0_no_pos0"], 1), fixed(r["fvu_no_pos0"], 3), fixed(r["delta_lm_loss"], 3)))
            cells.append(f"**{cell}**" if best[j] == i else cell)
        rows.append([label, *cells])
    headers = ["JumpReLU run (300k tokens)", "λ 0.002: L0 / FVU / ΔLM loss", "λ 0.006: L0 / FVU / ΔLM loss"]
    return table(headers, rows)


def tokens(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def sweep_longer() -> str:
    rows = []
    for arch, setting in (("jumprelu", "lambda=0.002"), ("topk", "k=20")):
        for rel in ("sweep/report.json", "sweep/longer_1m2_report.json"):
            r = sweep_row(rel, arch, setting)
            keys = ("fvu_no_pos0", "delta_lm_loss", "ce_recovered")
            rows.append(
                [
                    f"{SWEEP_ARCHS[arch]} {sweep_setting(r)}",
                    tokens(load(rel)["setup"]["total_tokens"]),
                    fixed(r["l0_no_pos0"], 1),
                    *(fixed(r[k], 3) for k in keys),
                ]
            )
    return table(["SAE", "tokens", "L0", "FVU", "ΔLM loss", "CE recovered"], rows)


def sweep_jumprelu_beta1_0() -> str:
    rs = sorted(
        (r for r in load("sweep/report_jumprelu_beta1_0.json")["rows"]["heldout"] if r["arch"] == "jumprelu"),
        key=lambda r: r["sparsity_coef"],
    )
    rows = [
        [name, *(fixed(r[k], digits) for r in rs)]
        for name, k, digits in (("L0", "l0_no_pos0", 1), ("FVU", "fvu_no_pos0", 3), ("ΔLM loss", "delta_lm_loss", 3))
    ]
    return table(["JumpReLU λ", *(f"{r['sparsity_coef']:g}" for r in rs)], rows)


# ---- position0/ ----------------------------------------------------------------------------------------------------
def position0() -> str:
    """The two evaluations side by side; bold: the better of the two where the row has a direction."""
    evs = [load(f"position0/eval_position0_{k}.json") for k in ("excluded", "kept")]

    def h(key: str) -> Callable[[dict[str, Any]], float]:
        return lambda ev: float(ev["headline"][key])

    def m(key: str) -> Callable[[dict[str, Any]], float]:
        return lambda ev: float(ev["metrics"]["all_no_pos0"][key])

    def scale(ev: dict[str, Any]) -> float:
        return float(ev["sae"]["metadata"]["input_scale_folded"])

    # label, values (first one decides bold), format, better ("low", "high" or None)
    spec: list[tuple[str, list[Callable[[dict[str, Any]], float]], Callable[[float], str], str | None]] = [
        ("input scale C (E‖x/C‖² = 1)", [scale], lambda v: f"{v:,.0f}", None),
        ("held-out FVU, without position 0", [m("fvu")], lambda v: fixed(v, 3), "low"),
        ("held-out L0, without position 0", [m("l0")], lambda v: fixed(v, 1), "low"),
        (
            "held-out log2 MSE / log2 MSE_st, without position 0",
            [h("log2_mse_no_pos0"), h("log2_mse_st_no_pos0")],
            lambda v: fixed(v, 2),
            "low",
        ),
        (
            "held-out log2 MSE / log2 MSE_st, all tokens",
            [h("log2_mse"), h("log2_mse_st")],
            lambda v: fixed(v, 2),
            "low",
        ),
        ("held-out cosine(x, x̂), without position 0", [m("cosine_similarity")], lambda v: fixed(v, 3), "high"),
        ("delta LM loss (nats/token)", [h("delta_ce")], lambda v: fixed(v, 2), "low"),
        ("KL to the clean model (nats/token)", [h("kl")], lambda v: fixed(v, 2), "low"),
        ("CE recovered", [h("ce_recovered")], lambda v: fixed(v, 3), "high"),
        ("dead latents on the held-out set", [h("dead_fraction")], lambda v: f"{100 * v:.0f}%", None),
    ]
    rows = []
    for label, fns, fmt, better in spec:
        cells = [" / ".join(fmt(f(ev)) for f in fns) for ev in evs]
        if better:
            first = [fns[0](ev) for ev in evs]
            best = first.index(min(first) if better == "low" else max(first))
            cells[best] = f"**{cells[best]}**"
        rows.append([label, *cells])
    return table(["", "position 0 excluded (default)", "position 0 kept"], rows)


# ---- steering/ -----------------------------------------------------------------------------------------------------
def quality_cell(d: dict[str, float], sign: bool = False) -> str:
    return f"{fixed(d['value'], 3, sign)} [{fixed(d['low'], 3)}, {fixed(d['high'], 3)}]"


def steering_quality_nll() -> str:
    s = load("steering/quality_nll.json")["summary"]
    diffs = {p["alpha"]: p["difference"] for p in s["pairs"] if p["metric"] == "nll"}
    rows = []
    for alpha in s["groups"]["top"]:
        row = [f"{float(alpha):g}"]
        for g in ("top", "random"):
            e = s["groups"][g][alpha]
            row += [quality_cell(e["nll"]), "—" if float(alpha) == 0 else quality_cell(e["nll_vs_alpha_0"], True)]
        d = diffs.get(float(alpha))
        rows.append([*row, "—" if d is None else quality_cell(d, True)])
    headers = ["α", "special-token latents", "change from α 0", "random latents", "change from α 0", "special − random"]
    return table(headers, rows, right=0)


def steering_quality_acc() -> str:
    q = load("steering/quality_acc.json")
    s, n = q["summary"], q["n_items"]
    rows = []
    for alpha in s["groups"]["top"]:
        row = [f"{float(alpha):g}"]
        for g in ("top", "random"):
            e = s["groups"][g][alpha]
            row += [quality_cell(e["nll"]), "—" if float(alpha) == 0 else quality_cell(e["nll_vs_alpha_0"], True)]
        acc = {f"{round(s['groups'][g][alpha]['accuracy']['value'] * n)}/{n}" for g in ("top", "random")}
        rows.append([*row, " vs ".join(sorted(acc))])
    top, rnd = q["latents"][0], q["random_latents"][0]
    headers = [
        "α",
        f"latent {top}: answer NLL",
        "change from α 0",
        f"random {rnd}: answer NLL",
        "change from α 0",
        "accuracy (both)",
    ]
    return table(headers, rows, right=0)


# ---- steering/judged/ ----------------------------------------------------------------------------------------------
def judged_cell(v: list[float]) -> str:
    """``[value, low, high]`` as value [low, high]."""
    return f"{fixed(v[0], 3)} [{fixed(v[1], 3)}, {fixed(v[2], 3)}]"


def judged_changed(study: dict[str, Any], r: str, label: str) -> float:
    """The share of prompts whose steered answer (``label``: ``sae:NAME`` or ``null:J``) differs from the clean one."""
    pairs = zip(study["answers"][r][label], study["clean_answers"], strict=True)
    return float(sum(a != c for a, c in pairs) / len(study["clean_answers"]))


def steering_judged() -> str:
    """Per r: each SAE's special-token latent (win rate, percentile among the null's win rates, per-prompt difference
    from the null mean, share of answers changed), then the null row (its win rate, the pooled difference, the mean
    share of answers changed over the null directions with their range)."""
    d = load("steering/judged/study.json")
    null_name = {"unit": "unit vectors", "latents": "random live latents"}[d["null"]]
    rows = []
    for r, e in d["summary"].items():
        rf, alpha = f"{float(r):g}", fixed(d["alphas"][r], 1)
        for name, s in e["saes"].items():
            rows.append(
                [
                    rf,
                    alpha,
                    name,
                    str(d["chosen_latents"][name]["latent"]),
                    judged_cell(s["win_rate"]),
                    f"{s['null_percentile']:g}",
                    judged_cell(s["minus_null"]),
                    f"{judged_changed(d, r, f'sae:{name}'):.0%}",
                ]
            )
        changed = [judged_changed(d, r, f"null:{j}") for j in range(len(e["null_win_rates"]))]
        spread = f"{100 * min(changed):.0f}–{100 * max(changed):.0f}%"
        rows.append(
            [
                rf,
                "",
                f"null ({len(changed)} {null_name})",
                "",
                judged_cell(e["null_win_rate"]),
                "",
                f"pooled {judged_cell(e['pooled_minus_null'])}",
                f"{sum(changed) / len(changed):.0%} ({spread})",
            ]
        )
    headers = [
        "r",
        "α",
        "SAE",
        "latent",
        "win rate P(steered preferred)",
        "null percentile",
        "minus null mean",
        "answers changed",
    ]
    return table(headers, rows, left=(2,))


def steering_judged_null_latents() -> str:
    """The second null (random live latents), per r: the pooled difference from the null, the special-token latents'
    percentiles among the null's win rates, the null's win rate and the order agreement of the null's pairs asked."""
    d = load("steering/judged/null_latents/study.json")
    names = list(d["chosen_latents"])
    rows = []
    for r, e in d["summary"].items():
        asked = [p for j in range(len(e["null_win_rates"])) for p in d["pairs"][r][f"null:{j}"]]
        agree = [p["consistent"] for p in asked if p["consistent"] is not None]
        rows.append(
            [
                f"{float(r):g}",
                fixed(d["alphas"][r], 1),
                judged_cell(e["pooled_minus_null"]),
                ", ".join(f"{e['saes'][n]['null_percentile']:g}" for n in names),
                judged_cell(e["null_win_rate"]),
                f"{fixed(sum(agree) / len(agree), 3)} (null pairs)",
            ]
        )
    latents = ", ".join(str(d["chosen_latents"][n]["latent"]) for n in names)
    headers = [
        "r",
        "α",
        f"pooled minus null ({len(names)} SAEs)",
        f"special-token percentiles ({latents})",
        "null win rate",
        "order agreement",
    ]
    return table(headers, rows, left=(3,))


TABLES: dict[str, dict[str, Callable[[], str]]] = {
    "compare/README.md": {
        "compare_seeds_heldout": compare_seeds("heldout"),
        "compare_seeds_verdicts": compare_verdicts,
        "compare_single_seed_heldout": compare_single_seed,
        "compare_single_seed_fidelity": compare_single_seed_fidelity,
        "compare_beta1_0": compare_beta1_0,
    },
    "main_job/README.md": {"main_job_figures": main_job_figures, "main_job_rerun": main_job_rerun},
    "compare_k/README.md": {
        "compare_k_verdicts": study_verdicts(
            "compare_k/report.json", "heldout", ("log2_mse_no_pos0", "log2_mse_st_no_pos0", "delta_lm_loss")
        ),
        "compare_k_parts_means": study_means(
            "compare_k/template_parts/report.json", "heldout", ("log2_mse_st_prefix", "log2_mse_st_turns")
        ),
        "compare_k_parts_verdicts": study_verdicts(
            "compare_k/template_parts/report.json", "heldout", ("log2_mse_st_prefix", "log2_mse_st_turns")
        ),
    },
    "compare_varied/README.md": {
        f"compare_varied_{kind}_{name}": fn("compare_varied/report.json", eval_set, VARIED_KEYS)
        for kind, fn in (("means", study_means), ("verdicts", study_verdicts))
        for name, eval_set in (("heldout", "heldout"), ("unseen", "eval_unseen_prompts"))
    },
    "interp_matched/README.md": {
        "interp_matched_methods": interp_matched("methods"),
        "interp_matched_saes": interp_matched("saes"),
        "interp_matched_pairs": interp_matched("pairs"),
    },
    "sweep/README.md": {
        "sweep_seeds": sweep_frontier("sweep/seeds/report.json", 2),
        "sweep_gated_standard": sweep_frontier("sweep/gated_standard/report.json", 1),
        "sweep_sites": sweep_sites,
        "sweep_single_seed": sweep_single_seed,
        "sweep_jumprelu_checks": sweep_jumprelu_checks,
        "sweep_longer": sweep_longer,
        "sweep_jumprelu_beta1_0": sweep_jumprelu_beta1_0,
    },
    "position0/README.md": {"position0": position0},
    "steering/README.md": {"steering_quality_nll": steering_quality_nll, "steering_quality_acc": steering_quality_acc},
    "steering/judged/README.md": {
        "steering_judged": steering_judged,
        "steering_judged_null_latents": steering_judged_null_latents,
    },
}
"""README (relative to docs/results/) -> its generated tables."""


def render(text: str, tables: dict[str, Callable[[], str]]) -> str:
    """``text`` with every ``<!-- table:NAME -->`` block replaced by its rendered table (each must be present)."""
    for name, fn in tables.items():
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(\n<!-- /table:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"no <!-- table:{name} --> ... <!-- /table:{name} --> block")
        table = fn()

        def replace(m: re.Match[str], table: str = table) -> str:
            return m.group(1) + table + m.group(2)

        text = pattern.sub(replace, text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a README differs from its rendering")
    args = ap.parse_args(argv)
    stale = []
    for rel, tables in TABLES.items():
        path = ROOT / rel
        old = path.read_text()
        new = render(old, tables)
        if new != old:
            stale.append(rel)
            if not args.check:
                path.write_text(new)
    if stale:
        print(("stale: " if args.check else "rewrote: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
