"""``chatsae compare``: the FAST paper's comparison. BT(P) (plain text in blocks), BT(F) (chat data in blocks) and
FAST (one chat sample per sequence) SAEs are trained at the same token budget for each architecture, each method's
activations harvested once; every SAE is evaluated FAST-style on the same held-out chat records (and optional extra
files), and ``report.md`` / ``report.json`` / PNG charts give the paper's log2 MSE / MSE_st table and more.

Layout of ``OUT_DIR``: ``cache/<method>/`` activation caches, ``<method>_<arch>/`` training runs (``sae/``,
``metrics.jsonl``, ``eval_<set>.json``), ``heldout.jsonl``, ``plan.json``, ``report.md``, ``report.json``,
``mse.png``, ``metrics.png`` (docs/metrics.md, "Comparing methods").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..activations.pipeline import DataConfig
from ..core.config import check_seed, to_dict
from ..core.ownership import check_replace
from ..data.methods import METHOD_NAMES
from ..eval import stats
from ..eval.plots import BarPanel, bar_chart
from ..eval.result import EvalResult, dumps
from ..sae import ARCHITECTURES, K_ARCHITECTURES, SAEConfig
from ..train.config import DEFAULT_SPARSITY_COEF
from .study import (
    ARCH_LABELS,
    CLASS_METRICS,
    CLASS_SUBSETS,
    METHOD_LABELS,
    SUMMARY,
    SUMMARY_KEYS,
    Study,
    cell,
    check_names,
    label,
    md_table,
    names,
    now,
    summarize,
    unit,
    write_texts,
)


@dataclass
class CompareConfig:
    """Which methods, architectures and data the FAST comparison trains (all SAEs at the same token budget)."""

    out_dir: str = "runs/compare"
    """Output directory: caches, one training run per method x architecture, report.md/json and charts."""
    overwrite: bool = False
    """Write into a non-empty --out-dir chatsae did not write (its files are kept: none is replaced or removed)."""
    instruct_data: str = "default"
    """Instruction (chat) data for BT(F) and FAST, and the held-out evaluation records ('default' = chatsae's own)."""
    pretrain_data: str | None = None
    """Plain-text (pretraining-style) data for BT(P): .txt, or JSON/JSONL with a text column. Needed for bt-p."""
    pretrain_format: str = "auto"
    """Record format of --pretrain-data (auto | text | ...); --data-format/--text-field apply to --instruct-data."""
    pretrain_text_field: str | None = None
    """Column of --pretrain-data holding the text (default 'text')."""
    methods: str | list[str] = "bt-p,bt-f,fast"
    """Methods to compare (rows of the table): bt-p, bt-f, fast."""
    archs: str | list[str] = "standard,jumprelu"
    """Architectures (column groups of the table): standard, jumprelu, topk, gated."""
    sparsity_coefs: str | list[str] = ""
    """Per-architecture sparsity coefficient, e.g. 'standard=0.3,jumprelu=0.002' (others: --sparsity-coef, else
    the architecture default)."""
    expansion_factor: int = 8
    """d_sae = expansion_factor x d_in when --width/--d-sae is not given (FAST: 8 or 16)."""
    seeds: int = 1
    """Training seeds per SAE (the data split and evaluation records fixed): seed i trains with --seed + i, its run
    named <method>_<arch>_seed<seed> (seed 0 keeps <method>_<arch>); reports show the mean with 95% intervals."""


# ---- seeds and intervals -------------------------------------------------------------------------------------------
INTERVAL_KEYS = {k: v for k, v in SUMMARY.items() if v[1] in stats.SEQUENCE_METRICS}
"""Summary keys whose per-sequence form gives a bootstrap interval (all but the dead fraction)."""
VERDICT_METRICS = {
    "log2_mse_st": "MSE_st",
    "log2_mse_st_strict": "MSE_st (strict)",
    "log2_mse": "MSE",
    "log2_mse_st_no_pos0": "MSE_st without position 0",
    "log2_mse_no_pos0": "MSE without position 0",
    "log2_mse_st_prefix": "MSE_st, system block",
    "log2_mse_st_turns": "MSE_st, around the turns",
    "delta_lm_loss": "delta LM loss",
}
"""Metrics (lower is better) the report gives a paired verdict for."""
METHOD_ORDER = METHOD_NAMES
"""Verdict pairs name the earlier method first (FAST vs BT(F), FAST vs BT(P), BT(F) vs BT(P))."""


MAX_SEEDS = 1000
"""Most training seeds per SAE (``--seeds``)."""


def seed_list(n: int, base: int) -> list[int]:
    """``n`` training seeds from ``base`` (``--seeds``), with a clear error for ``n`` outside 1 .. :data:`MAX_SEEDS`
    and for seeds past :data:`chatsae.core.config.SEED_MAX`."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SEEDS:
        raise ValueError(f"--seeds: {n}; give an integer in [1, {MAX_SEEDS}]")
    check_seed(base, "seed", n)
    return [base + i for i in range(n)]


def seed_run(name: str, i: int, seed: int) -> str:
    """Run directory of seed index ``i``: seed 0 keeps ``name`` (existing studies resume), others ``name_seed<s>``."""
    return name if i == 0 else f"{name}_seed{seed}"


@contextmanager
def seeded(study: Study, seed: int) -> Iterator[Study]:
    """Train with ``seed`` inside the block (the study's TrainConfig is restored after)."""
    tc = study.train_cfg
    study.train_cfg = dataclasses.replace(tc, seed=seed)
    try:
        yield study
    finally:
        study.train_cfg = tc


def seed_row(evals: list[EvalResult]) -> dict[str, Any]:
    """One SAE configuration over its seeds: every :data:`SUMMARY` value as the mean over seeds, ``seeds``, and
    ``intervals[key]`` = ``{mean, n_seeds, seeds: [low, high] | None, sequences: [low, high] | None}``."""
    rows = [summarize(r) for r in evals]
    mean = {}
    for key in SUMMARY_KEYS:
        vals = [v for r in rows if isinstance(v := r.get(key), (int, float)) and v == v]
        mean[key] = None if len(vals) < len(rows) else rows[0][key] if len(rows) == 1 else sum(vals) / len(vals)
    return {**mean, "seeds": len(evals), "intervals": stats.seed_summary(evals, INTERVAL_KEYS)}


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


def method_verdicts(
    evals: dict[str, dict[str, list[EvalResult]]],
    metrics: dict[str, str] = VERDICT_METRICS,
) -> list[dict[str, Any]]:
    """Paired verdicts ``evals[method][arch] -> results per seed``: for each architecture, each pair of methods and
    metric, the difference A − B with its intervals and the verdict (:func:`chatsae.eval.stats.paired_verdict`)."""
    methods = sorted(evals, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))
    archs = list(dict.fromkeys(a for per in evals.values() for a in per))
    out = []
    for arch in archs:
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                if arch not in evals[a] or arch not in evals[b]:
                    continue
                for key, name in metrics.items():
                    subset, metric = SUMMARY[key]
                    v = stats.paired_verdict(
                        evals[a][arch],
                        evals[b][arch],
                        subset,
                        metric,
                        (METHOD_LABELS.get(a, a), METHOD_LABELS.get(b, b), name),
                    )
                    out.append({"arch": arch, "a": a, "b": b, "metric": key, **v})
    return out


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


# ---- the comparison ------------------------------------------------------------------------------------------------
class CompareResult(NamedTuple):
    report: dict[str, Any]
    """The content of report.json: setup, caches, eval_sets, results[set][method][arch], best[set][arch][metric]."""
    files: list[Path]
    """report.md, report.json and the PNG charts."""


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


def parse_coefs(spec: str | list[str], archs: list[str]) -> dict[str, float]:
    """``"standard=0.3,jumprelu=0.002"`` -> ``{"standard": 0.3, "jumprelu": 0.002}``, with clear errors."""
    out = {}
    for item in names(spec):
        arch, sep, value = item.partition("=")
        if not sep or arch.strip() not in ARCHITECTURES:
            raise ValueError(f"--sparsity-coefs: {item!r} is not ARCH=VALUE with ARCH one of {sorted(ARCHITECTURES)}")
        try:
            out[arch.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--sparsity-coefs: {item!r}: {value!r} is not a number") from None
    unused = set(out) - set(archs)
    if unused:
        raise ValueError(f"--sparsity-coefs names {sorted(unused)}, which are not among --archs {archs}")
    return out


def method_data(cc: CompareConfig, data: DataConfig, method: str, out_dir: Path) -> DataConfig:
    """The data config of one method: BT(P) reads --pretrain-data (nothing held out), BT(F)/FAST --instruct-data."""
    cache = str(out_dir / "cache" / method)
    if method == "bt-p":
        return dataclasses.replace(
            data,
            data=str(cc.pretrain_data),
            data_format=cc.pretrain_format,
            holdout=0,
            text_field=cc.pretrain_text_field,
            method=method,
            cache_dir=cache,
        )
    return dataclasses.replace(data, data=cc.instruct_data, method=method, cache_dir=cache)


def run_compare(cc: CompareConfig, study: Study, command: str = "") -> CompareResult:
    """Train every method x architecture at the same token budget, evaluate all SAEs FAST-style on the same
    records, write the report (see the module docstring)."""

    methods = check_names("methods", names(cc.methods), METHOD_LABELS)
    archs = check_names("archs", names(cc.archs), ARCHITECTURES)
    coefs = parse_coefs(cc.sparsity_coefs, archs)
    if "bt-p" in methods and not cc.pretrain_data:
        raise ValueError("--pretrain-data is required for BT(P) (plain text), or leave bt-p out of --methods")
    study.data = dataclasses.replace(study.data, data=cc.instruct_data)
    study.check_plan({"compare": {k: v for k, v in to_dict(cc).items() if k.startswith(("instruct", "pretrain"))}})
    seeds = seed_list(cc.seeds, study.train_cfg.seed)
    sets = study.eval_sets()
    results: dict[str, dict[str, dict[str, Any]]] = {es.name: {m: {} for m in methods} for es in sets}
    evals: dict[str, dict[str, dict[str, list[EvalResult]]]] = {es.name: {m: {} for m in methods} for es in sets}
    caches: dict[str, Any] = {}
    trained: dict[tuple[str, str], list[Path]] = {(m, a): [] for m in methods for a in archs}
    tc = study.train_cfg
    d_in = d_sae = 0
    for method in methods:
        dcfg = method_data(cc, study.data, method, study.out_dir)
        cache_dir, manifest = study.harvest(dcfg, METHOD_LABELS[method])
        caches[method] = {
            "data": dcfg.data_path,
            "path": str(cache_dir),
            "vectors": manifest.n_tokens,
            "passes": tc.total_tokens / max(manifest.n_tokens, 1),
        }
        meta = study.sae_metadata(dcfg, manifest, sets[0].path if sets[0].name == "heldout" else None)
        for arch in archs:
            for i, seed in enumerate(seeds):
                with seeded(study, seed):
                    run = seed_run(f"{method}_{arch}", i, seed)
                    trained[method, arch].append(study.train(cache_dir, run, arch, coefs.get(arch), None, meta, dcfg))
    for es in sets:  # every SAE on the same records, several per clean forward pass
        order = [(m, a) for m in methods for a in archs]
        flat = study.evaluate_all([p for key in order for p in trained[key]], es, method="fast")
        for j, (method, arch) in enumerate(order):
            per_seed = flat[j * len(seeds) : (j + 1) * len(seeds)]
            evals[es.name][method][arch] = per_seed
            row = {**seed_row(per_seed), "sae": str(trained[method, arch][0]), "tokens": per_seed[0].setup["tokens"]}
            results[es.name][method][arch] = row
            d_in, d_sae = per_seed[0].sae["d_in"], per_seed[0].sae["d_sae"]
    setup = {
        "model": study.data.model,
        "hook": study.hook,
        "d_in": d_in,
        "d_sae": d_sae,
        "total_tokens": tc.total_tokens,
        "batch_size": tc.batch_size,
        "lr": tc.lr,
        "seed": tc.seed,
        "seeds": seeds,
        "intervals": {"level": stats.LEVEL, "n_boot": stats.N_BOOT, "bootstrap_seed": stats.SEED},
        "methods": methods,
        "archs": archs,
        "sparsity_coefs": {
            a: coefs.get(a, tc.sparsity_coef if tc.sparsity_coef is not None else DEFAULT_SPARSITY_COEF[a])
            for a in archs
            if a not in K_ARCHITECTURES
        },
        "k": study.sae_options.get("k", SAEConfig.k) if set(K_ARCHITECTURES) & set(archs) else None,
        "instruct_data": study.data.data_path,
        "pretrain_data": cc.pretrain_data,
        "holdout": study.data.holdout,
        "holdout_seed": 0,
        "max_length": study.data.max_length,
        "context_size": study.data.context_size,
        "dedup_n": study.data.dedup_n,
        "harvest": to_dict(study.harvest_opts),
        "eval": {"method": "fast", **to_dict(study.ev)},
        "command": command,
        "date": now(),
    }
    best = {
        name: {arch: {metric: best_methods(per_method, metric)[arch] for metric in BEST_METRICS} for arch in archs}
        for name, per_method in results.items()
    }
    verdicts = {name: method_verdicts(per_method) for name, per_method in evals.items()}
    report = {
        "kind": "chatsae.compare",
        "schema_version": 2,
        "setup": setup,
        "caches": caches,
        "eval_sets": {es.name: {"label": es.label, "path": es.path, "records": len(es.records)} for es in sets},
        "results": results,
        "best": best,
        "verdicts": verdicts,
    }
    return CompareResult(report, write_compare_report(report, study.out_dir))


# ---- the report ----------------------------------------------------------------------------------------------------
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
