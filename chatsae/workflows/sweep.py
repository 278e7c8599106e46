"""``chatsae sweep``: sparsity-fidelity frontiers. Activations are harvested once; each architecture is trained at
several sparsity settings (lambda for jumprelu / standard / gated, k for topk) on the same cache and token budget;
every SAE is evaluated on the same held-out records. Writes ``frontier.csv`` (one row per setting), ``frontier.png``
(delta LM loss and FVU against L0, one line per architecture) and ``report.md`` / ``report.json``, which say whether
JumpReLU's frontier is ahead: delta LM loss and FVU interpolated at matched L0 (:func:`frontier_gap`).

Layout of ``OUT_DIR``: ``activations/`` (the cache, unless ``--cache-dir``), ``<arch>_<setting>/`` training runs
(``sae/``, ``metrics.jsonl``, ``eval_<set>.json``), ``heldout.jsonl``, ``plan.json`` and the outputs above.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ..core.config import to_dict, validate
from ..core.constants import SAE_CFG_FILE
from ..core.ownership import check_replace
from ..eval import stats
from ..eval.plots import LinePanel, line_chart
from ..eval.result import EvalResult, dumps
from ..sae import ARCHITECTURES, K_ARCHITECTURES
from .compare import seed_list, seed_row, seed_run, seeded
from .compare_report import error_bounds, interval_text
from .frontier import FrontierGap, Side, frontier_gap, with_intervals
from .study import ARCH_LABELS, SUMMARY, Study, cell, check_names, label, md_table, names, now, unit, write_texts

DEFAULT_GRIDS = {
    "jumprelu": "0.0003,0.0008,0.002,0.005,0.012",
    "standard": "0.05,0.065,0.085,0.11,0.14",
    "gated": "0.07,0.1,0.14,0.2,0.25",
    "topk": "10,20,40,80",
}
"""Default sparsity grids (lambda in units of E||x||^2 = 1 inputs; k), meant to span L0 of about 10-100 on the
embedded model's middle residual stream (resid_post.15, 8x). Calibrated with 150k-token FAST runs on alpaca_4000 at
the default lr 3e-3 (L0 without position 0): jumprelu lambda 0.0005 / 0.03 -> 75 / 5.6; standard 0.06 / 0.19 -> 66 /
4.3; gated 0.07 / 0.25 -> 101 / 10.6. L1 grids are steep: L0 falls ~5x per doubling of lambda."""
X_KEY = "l0_no_pos0"
Y_KEYS = ("delta_lm_loss", "fvu_no_pos0")
"""The frontier: L0 (position 0 excluded, as in training) against delta LM loss (position 0 kept clean in the
splice) and FVU without position 0 (an attention sink at position 0 would dominate it: on the embedded model its
squared norm is ~20,000x other tokens'; evaluations state the ratio measured on the model at hand)."""
BOUNDED = (X_KEY, *Y_KEYS)
"""Frontier columns with 95% bounds in the CSV (``_low`` / ``_high``: the widest of the bootstrap over sequences
and the t-interval over seeds)."""
COLUMNS = (
    "eval_set",
    "arch",
    "setting",
    "sparsity_coef",
    "k",
    "seeds",
    "l0",
    "l0_no_pos0",
    "fvu",
    "fvu_no_pos0",
    "mse",
    "mse_no_pos0",
    "log2_mse",
    "log2_mse_st",
    "log2_mse_st_strict",
    "delta_lm_loss",
    "delta_lm_loss_no_pos0",
    "kl",
    "ce_recovered",
    "ce_recovered_no_pos0",
    "dead_fraction",
    "freq_gt_10pct",
    "freq_gt_1pct",
    *(f"{k}_{b}" for k in BOUNDED for b in ("low", "high")),
    "sae",
)


@dataclass
class SweepConfig:
    """Which architectures and sparsity settings the sweep trains (all on the same cache and token budget)."""

    out_dir: str = "runs/sweep"
    """Output directory: the cache, one training run per setting, frontier.csv/png and report.md/json."""
    overwrite: bool = False
    """Write into a non-empty --out-dir chatsae did not write (its files are kept: none is replaced or removed)."""
    archs: str | list[str] = "jumprelu,topk,standard,gated"
    """Architectures to sweep: jumprelu, topk, standard, gated."""
    jumprelu_coefs: str | list[str] = DEFAULT_GRIDS["jumprelu"]
    """JumpReLU L0 coefficients lambda (inputs normalised to E||x||^2 = 1)."""
    standard_coefs: str | list[str] = DEFAULT_GRIDS["standard"]
    """Standard (ReLU) L1 coefficients lambda (decoder-norm weighted, normalised inputs)."""
    gated_coefs: str | list[str] = DEFAULT_GRIDS["gated"]
    """Gated L1 coefficients lambda (normalised inputs)."""
    topk_ks: str | list[str] = DEFAULT_GRIDS["topk"]
    """k values of topk, batchtopk and matryoshka (the mean L0 of these SAEs is k)."""
    expansion_factor: int = 8
    """d_sae = expansion_factor x d_in when --width/--d-sae is not given."""
    seeds: int = 1
    """Training seeds per setting (the cache and evaluation records fixed): seed i trains with --seed + i, its run
    named <arch>_<setting>_seed<seed> (seed 0 keeps the plain name); points are means with 95% error bars."""

    def __post_init__(self) -> None:
        validate(self, paths=("out_dir",))


class Setting(NamedTuple):
    """One point of the sweep: an architecture with a sparsity coefficient (or k for topk)."""

    arch: str
    coef: float | None = None
    k: int | None = None

    @property
    def run(self) -> str:
        """Directory name, e.g. ``jumprelu_coef0.002`` / ``topk_k32``."""
        return f"{self.arch}_k{self.k}" if self.k is not None else f"{self.arch}_coef{self.coef:g}"

    @property
    def label(self) -> str:
        return f"k={self.k}" if self.k is not None else f"lambda={self.coef:g}"


def settings(cfg: SweepConfig) -> list[Setting]:
    """Every (architecture, setting) of ``cfg`` in order, with clear errors for bad grid values."""
    out = []
    for arch in check_names("archs", names(cfg.archs), ARCHITECTURES):
        option = "topk_ks" if arch in K_ARCHITECTURES else f"{arch}_coefs"
        values = names(getattr(cfg, option))
        if not values:
            raise ValueError(f"--{option.replace('_', '-')}: no values for {arch}")
        for v in values:
            try:
                out.append(Setting(arch, k=int(v)) if arch in K_ARCHITECTURES else Setting(arch, coef=float(v)))
            except ValueError:
                raise ValueError(f"--{option.replace('_', '-')}: {v!r} is not a number") from None
    return out


def run_sweep(sc: SweepConfig, study: Study, command: str = "") -> tuple[dict[str, Any], list[Path]]:
    """Harvest once, train and evaluate every setting, write the outputs; returns (report.json content, files)."""
    points = settings(sc)
    seeds = seed_list(sc.seeds, study.train_cfg.seed)
    study.check_plan({"sweep": "frontier"})
    sets = study.eval_sets()
    cache_dir, manifest = study.harvest(study.data, "sweep")
    meta = study.sae_metadata(study.data, manifest, sets[0].path if sets[0].name == "heldout" else None)
    rows: dict[str, list[dict[str, Any]]] = {es.name: [] for es in sets}
    evals: dict[str, list[list[EvalResult]]] = {es.name: [] for es in sets}
    trained: list[list[Path]] = []
    for i, s in enumerate(points, 1):
        study.report(f"[sweep {i}/{len(points)}] {ARCH_LABELS.get(s.arch, s.arch)} {s.label}")
        sae_dirs = []
        for j, seed in enumerate(seeds):
            with seeded(study, seed):
                sae_dirs.append(study.train(cache_dir, seed_run(s.run, j, seed), s.arch, s.coef, s.k, meta))
        trained.append(sae_dirs)
    for es in sets:  # every SAE on the same records, several per clean forward pass
        flat = study.evaluate_all([p for dirs in trained for p in dirs], es)
        for i, (s, sae_dirs) in enumerate(zip(points, trained, strict=True)):
            evals[es.name].append(flat[i * len(seeds) : (i + 1) * len(seeds)])
            row = seed_row(evals[es.name][-1])
            bounds = {
                f"{k}_{b}": v
                for k in BOUNDED
                for b, v in zip(("low", "high"), error_bounds(row, k) or (None, None), strict=True)
            }
            rows[es.name].append(
                {
                    "eval_set": es.name,
                    "arch": s.arch,
                    "setting": s.label,
                    "sparsity_coef": s.coef,
                    "k": s.k,
                    **row,
                    **bounds,
                    "sae": str(sae_dirs[0]),
                }
            )
    gaps = {name: frontier_gaps(r, evals=evals[name]) for name, r in rows.items()}
    tc = study.train_cfg
    report = {
        "kind": "chatsae.sweep",
        "schema_version": 1,
        "setup": {
            "model": study.data.model,
            "hook": study.hook,
            "method": study.data.method,
            "data": study.data.data_path,
            "holdout": study.data.holdout,
            "total_tokens": tc.total_tokens,
            "batch_size": tc.batch_size,
            "lr": tc.lr,
            "seed": tc.seed,
            "seeds": seeds,
            "cache_vectors": manifest.n_tokens,
            "d_sae": _d_sae(Path(rows[sets[0].name][0]["sae"])),
            "settings": [s._asdict() for s in points],
            "eval": to_dict(study.ev),
            "command": command,
            "date": now(),
        },
        "eval_sets": {es.name: {"label": es.label, "path": es.path, "records": len(es.records)} for es in sets},
        "rows": rows,
        "gaps": {
            n: {y: {a: g._asdict() if g else None for a, g in per.items()} for y, per in by_y.items()}
            for n, by_y in gaps.items()
        },
    }
    return report, write_sweep_report(report, study.out_dir)


def frontier_gaps(
    rows: list[dict[str, Any]], ref: str = "jumprelu", evals: list[list[EvalResult]] | None = None
) -> dict[str, dict[str, FrontierGap | None]]:
    """``{metric: {arch: gap of ref against arch}}`` for the metrics of :data:`Y_KEYS` that were computed (empty
    when ``ref`` is not among the rows' architectures). With ``evals`` (per row, its seeds' results) each gap gets
    its intervals over sequences and seeds and a verdict (:func:`chatsae.workflows.frontier.with_intervals`)."""
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    if ref not in archs:
        return {}
    out: dict[str, dict[str, FrontierGap | None]] = {}
    for y in Y_KEYS:
        if not any(isinstance(r.get(y), (int, float)) for r in rows):
            continue
        out[y] = {}
        for a in archs:
            if a == ref:
                continue
            gap = frontier_gap(_points(rows, ref, y), _points(rows, a, y))
            if gap is not None and evals is not None:
                gap = with_intervals(gap, _side(rows, evals, ref, y), _side(rows, evals, a, y))
            out[y][a] = gap
    return out


def _side(rows: list[dict[str, Any]], evals: list[list[EvalResult]], arch: str, y: str) -> Side:
    subset, metric = SUMMARY[y]
    x_subset, x_metric = SUMMARY[X_KEY]
    mine = [(r, e) for r, e in zip(rows, evals, strict=True) if r["arch"] == arch]
    return Side(
        [r[X_KEY] for r, _ in mine],
        [
            [(ev.metrics.get(x_subset, {}).get(x_metric), ev.metrics.get(subset, {}).get(metric)) for ev in e]
            for _, e in mine
        ],
        [[stats.result_terms(ev, subset, metric) for ev in e] for _, e in mine],
    )


def _d_sae(sae_dir: Path) -> int:
    return int(json.loads((sae_dir / SAE_CFG_FILE).read_text())["d_sae"])


def _points(rows: list[dict[str, Any]], arch: str, y: str) -> list[tuple[Any, Any]]:
    return [(r[X_KEY], r[y]) for r in rows if r["arch"] == arch]


# ---- outputs -------------------------------------------------------------------------------------------------------
def frontier_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text with :data:`COLUMNS` (empty cells for missing values)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS} for r in rows)
    return buf.getvalue()


def frontier_figure(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Two panels, delta LM loss and FVU against L0 (log x), one line per architecture, with 95% error bars."""

    archs = list(dict.fromkeys(r["arch"] for r in rows))
    x_label = "L0 (active latents per token, position 0 excluded)"

    def errors(arch: str, y: str) -> list[tuple[Any, Any, Any, Any] | None]:
        return [
            (r.get(f"{X_KEY}_low"), r.get(f"{X_KEY}_high"), r.get(f"{y}_low"), r.get(f"{y}_high"))
            for r in rows
            if r["arch"] == arch
        ]

    panels = [
        LinePanel(
            f"{label(y)} vs L0",
            x_label,
            f"{label(y)} ({unit(y)})",
            {ARCH_LABELS.get(a, a): _points(rows, a, y) for a in archs},
            log_x=True,
            errors={ARCH_LABELS.get(a, a): errors(a, y) for a in archs},
        )
        for y in Y_KEYS
    ]
    return line_chart(panels, path, f"Sparsity-fidelity frontier, {title}", "architecture")


def gap_lines(gaps: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Sentences saying where JumpReLU's frontier stands against each other architecture, per metric."""
    out = []
    for y, per in gaps.items():
        ahead = [a for a, g in per.items() if g and g["verdict"] == "ahead"]
        for a, g in per.items():
            name = ARCH_LABELS.get(a, a)
            if g is None:
                out.append(f"- {label(y)} vs {name}: not comparable (fewer than two points, or no shared L0 range).")
                continue
            ivs = "; ".join(f"{w} [{cell(g[w][0])}, {cell(g[w][1])}]" for w in ("sequences", "seeds") if g.get(w))
            out.append(
                f"- {label(y)} vs {name}: over L0 {g['l0_low']:.3g}-{g['l0_high']:.3g}, JumpReLU is lower at "
                f"{g['wins']}/{g['n_points']} matched L0 values (mean difference {cell(g['mean_diff'])} "
                f"{unit(y)}; 95% intervals {ivs or 'none'}): **{g['verdict']}**"
                + (f" ({g['why']})." if g.get("why") else ".")
            )
        comparable = [a for a, g in per.items() if g]
        if comparable:
            who = ", ".join(ARCH_LABELS.get(a, a) for a in ahead) or "none of them"
            out.append(
                f"- **Summary ({label(y)})**: JumpReLU's frontier is ahead of {who} ({len(ahead)} of "
                f"{len(comparable)} comparable architectures; 'ahead' is a finding: 3 or more seeds and intervals "
                "over sequences and seeds that exclude 0)."
            )
    return out


def sweep_markdown(report: dict[str, Any], figures: dict[str, str]) -> str:
    s = report["setup"]
    keys = (
        "l0_no_pos0",
        "fvu_no_pos0",
        "delta_lm_loss",
        "ce_recovered",
        "log2_mse",
        "log2_mse_st",
        "dead_fraction",
        "freq_gt_10pct",
        "freq_gt_1pct",
    )
    lines = [
        "# Sparsity-fidelity sweep",
        "",
        f"- model: `{s['model']}`, hook `{s['hook']}`, width {s['d_sae']}, method {s['method']}",
        f"- data: `{s['data']}` ({s['holdout']} records held out, seed 0), {s['cache_vectors']:,} cached vectors",
        f"- token budget: {s['total_tokens']:,} per SAE (batch {s['batch_size']}, lr {s['lr']:g}, seed {s['seed']})",
        f"- date: {s['date']}",
        f"- command: `{s['command']}`",
        "",
        "The frontier plots L0 without position 0 (the SAEs are trained without it) against delta LM loss (position 0 "
        "kept clean in the splice) and FVU without position 0. JumpReLU is compared with each architecture by "
        "interpolating its metric linearly in log L0 at 9 log-spaced L0 values of the range both cover (means over "
        f"{len(s.get('seeds', [0]))} training seed(s)). Intervals are 95%: `[low, high]` a percentile bootstrap over "
        "the evaluation sequences, `seeds [low, high]` a t-interval over training seeds (with 2 or more); the "
        "error bars of the figure span the wider of the two. A frontier is called ahead or behind only with 3 or "
        "more seeds and when the mean difference's intervals over sequences and over seeds both exclude 0 (neither "
        f"of zero width); otherwise '{stats.NO_VERDICT}'.",
    ]
    for name, es in report["eval_sets"].items():
        rows = report["rows"][name]
        lines += [
            "",
            f"## Evaluation on {es['label']}",
            "",
            *gap_lines(report["gaps"].get(name, {})),
            "",
            md_table(
                ["SAE", "setting", *(label(k) for k in keys)],
                [[ARCH_LABELS.get(r["arch"], r["arch"]), r["setting"], *(cell(r.get(k)) for k in keys)] for r in rows],
            ),
            "",
            "95% intervals:",
            "",
            md_table(
                ["SAE", "setting", *(label(k) for k in BOUNDED)],
                [
                    [ARCH_LABELS.get(r["arch"], r["arch"]), r["setting"], *(interval_text(r, k) for k in BOUNDED)]
                    for r in rows
                ],
            ),
            "",
            f"![frontier]({figures[name]})",
        ]
    return "\n".join(lines) + "\n"


def write_sweep_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """frontier[_<set>].csv / .png for every evaluation set, report.json and report.md; returns their paths."""
    figures, texts = {}, {}
    for path in [
        f"frontier{'' if i == 0 else f'_{n}'}.{e}" for i, n in enumerate(report["eval_sets"]) for e in ["png", "csv"]
    ]:
        check_replace(out_dir / path, "--out-dir")
    for path in ("report.json", "report.md"):
        check_replace(out_dir / path, "--out-dir")
    for i, (name, es) in enumerate(report["eval_sets"].items()):
        suffix = "" if i == 0 else f"_{name}"
        figures[name] = frontier_figure(report["rows"][name], out_dir / f"frontier{suffix}.png", es["label"]).name
        texts[out_dir / f"frontier{suffix}.csv"] = frontier_csv(report["rows"][name])
    report = {**report, "figures": figures}
    texts[out_dir / "report.json"] = dumps(report) + "\n"
    texts[out_dir / "report.md"] = sweep_markdown(report, figures)
    return [out_dir / f for f in figures.values()] + write_texts(texts)
