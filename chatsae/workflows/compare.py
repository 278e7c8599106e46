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
from ..data.methods import METHOD_NAMES
from ..eval import stats
from ..eval.result import EvalResult
from ..sae import ARCHITECTURES, K_ARCHITECTURES, SAEConfig
from ..train.config import DEFAULT_SPARSITY_COEF
from .compare_report import (
    BEST_METRICS,
    best_methods,
    write_compare_report,
)
from .study import (
    METHOD_LABELS,
    SUMMARY,
    SUMMARY_KEYS,
    Study,
    check_names,
    names,
    now,
    summarize,
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


# ---- the comparison ------------------------------------------------------------------------------------------------
class CompareResult(NamedTuple):
    report: dict[str, Any]
    """The content of report.json: setup, caches, eval_sets, results[set][method][arch], best[set][arch][metric]."""
    files: list[Path]
    """report.md, report.json and the PNG charts."""


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
