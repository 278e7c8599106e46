"""``chatsae compare`` (the FAST paper's BT(P) / BT(F) / FAST table) and ``chatsae sweep`` (sparsity-fidelity
frontiers of several architectures). Both are resumable: rerun the same command to finish an interrupted study."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

from ..core.config import load_config_file, positive_int, validate
from ..core.locking import check_claim
from ..core.utils import check_output_file, write_output_file
from .common import add_command, configs_from_args

ALIASES = {"d_sae": ["width"]}
COMPARE_HELP = (
    "Reproduce the FAST paper's comparison: train BT(P) (plain text in blocks), BT(F) (chat data in blocks) and FAST "
    "(one chat sample per sequence) SAEs at the same token budget for each architecture, evaluate all of them the "
    "same way (FAST-style) on held-out chat records, and write report.md (log2 MSE / MSE_st table in the paper's "
    "layout, L0, FVU, delta LM loss, CE recovered, with and without position 0), report.json and PNG charts. "
    "With --seeds N every SAE is trained with N seeds; reports give means with 95 per cent intervals (over seeds, "
    "and a bootstrap over evaluation sequences) and state a verdict only with 3 or more seeds and when both intervals "
    "of the paired difference exclude 0 (else 'no verdict at this budget'). Caches and trained SAEs are reused: "
    "rerun the same command to resume."
)
SWEEP_HELP = (
    "Sparsity-fidelity frontiers: harvest once, train each architecture at several sparsity settings (lambda grids, "
    "TopK k grid), evaluate all on the same held-out records, and write frontier.csv, frontier.png (delta LM loss and "
    "FVU vs L0, with 95 per cent error bars) and report.md saying whether JumpReLU's frontier is ahead (a verdict "
    "only with --seeds 3 or more and intervals over seeds and sequences that exclude 0). Rerun the same command to "
    "resume."
)
PROXIES_HELP = (
    "Judge-free interpretability proxies from `chatsae features` outputs: token-explanation AUC (a latent explained by "
    "the tokens it fires on in its top contexts, scored on held-out contexts), the share of template-selective "
    "latents and the firing-frequency spectrum; with several SAEs, 95 per cent bootstrap intervals over latents and "
    "verdicts (docs/metrics.md, 'Interpretability proxies')."
)
# option dest -> what to use instead, for the options of the shared config groups that these commands set themselves
COMPARE_FIXED = {
    "data": "--instruct-data / --pretrain-data",
    "method": "--methods",
    "cache_dir": "--out-dir",
    "architecture": "--archs",
    "d_in": "nothing (the model's width is used)",
}
SWEEP_FIXED = {
    "architecture": "--archs",
    "sparsity_coef": "--jumprelu-coefs / --standard-coefs / --gated-coefs",
    "k": "--topk-ks",
    "d_in": "nothing (the model's width is used)",
}


def _sections(extra: tuple[str, type]) -> dict[str, type]:
    from ..activations.harvest import HarvestConfig
    from ..activations.pipeline import DataConfig
    from ..sae import SAEConfig
    from ..train.config import TrainConfig
    from ..workflows.study import StudyEvalConfig

    return {
        extra[0]: extra[1],
        "eval": StudyEvalConfig,
        "data": DataConfig,
        "harvest": HarvestConfig,
        "sae": SAEConfig,
        "train": TrainConfig,
    }


def register(sub: Any) -> None:
    from ..workflows.compare import CompareConfig
    from ..workflows.sweep import SweepConfig

    for name, help_text, handler, section, fixed in (
        ("compare", COMPARE_HELP, _compare, ("compare", CompareConfig), COMPARE_FIXED),
        ("sweep", SWEEP_HELP, _sweep, ("sweep", SweepConfig), SWEEP_FIXED),
    ):
        p = add_command(sub, name, help_text, handler, _sections(section), aliases=ALIASES)
        for action in p._actions:  # options the command sets itself: hidden from --help, rejected if given
            if action.dest in fixed:
                action.help = argparse.SUPPRESS
    p = add_command(sub, "proxies", PROXIES_HELP, _proxies)
    p.add_argument("features", nargs="+", help="features directories (`chatsae features` output), one per SAE")
    p.add_argument("--labels", default=None, help="comma-separated names of the SAEs (default: the directories)")
    p.add_argument("--n-tokens", type=positive_int, default=5, help="tokens in each latent's explanation (default 5)")
    p.add_argument("--out", default=None, help="write every proxy and comparison to this JSON file")


def _check_fixed(args: argparse.Namespace, fixed: dict[str, str]) -> dict[str, Any]:
    """Reject the hidden options (flags or config file); returns the config file's content."""
    file_cfg = load_config_file(args.config) if getattr(args, "config", None) else {}
    for dest, instead in fixed.items():
        in_file = any(isinstance(v, dict) and dest in v for v in file_cfg.values()) or (
            dest in file_cfg and not isinstance(file_cfg[dest], dict)
        )
        if hasattr(args, dest) or in_file:
            raise ValueError(f"--{dest.replace('_', '-')} does not apply to chatsae {args.command}; use {instead}")
    return file_cfg


def _sae_options(args: argparse.Namespace, sae: Any, file_cfg: dict[str, Any]) -> dict[str, Any]:
    """The SAEConfig fields given explicitly (flags or config file): the others keep each architecture's defaults."""
    given = set(file_cfg.get("sae") or {}) | {k for k, v in file_cfg.items() if not isinstance(v, dict)}
    return {
        f.name: getattr(sae, f.name)
        for f in dataclasses.fields(sae)
        if (hasattr(args, f.name) or f.name in given) and f.name not in ("architecture", "d_in")
    }


def command_line(args: argparse.Namespace) -> str:
    """The command as typed (when run from a shell), else rebuilt from the options given."""
    if sys.argv[1:2] == [args.command]:
        return shlex.join(["chatsae", *sys.argv[1:]])
    parts = ["chatsae", args.command]
    for dest, value in vars(args).items():
        if dest in ("handler", "config_classes", "command", "debug"):
            continue
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + dest.replace("_", "-"))
        elif value is not None or dest != "config":
            parts += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return shlex.join(parts)


def _study(args: argparse.Namespace, fixed: dict[str, str], section: str) -> tuple[Any, Any]:
    from ..workflows.study import Study

    file_cfg = _check_fixed(args, fixed)
    cfgs = configs_from_args(args)
    own = cfgs[section]
    check_study_dir(own, cfgs["data"], section)
    study = Study(
        own.out_dir,
        cfgs["data"],
        cfgs["harvest"],
        cfgs["train"],
        cfgs["eval"],
        sae_options=_sae_options(args, cfgs["sae"], file_cfg),
        expansion_factor=own.expansion_factor,
        overwrite=own.overwrite,
    )
    return own, study


def check_study_dir(own: Any, data: Any, section: str) -> None:
    """Before anything runs: the study's path options expanded (``~``, ``$VAR``; :func:`chatsae.core.config.validate`)
    and ``--out-dir`` checked by the ownership rule (:func:`chatsae.core.locking.check_claim`): not at or inside one
    of its data inputs nor inside chatsae's SAE/cache/features/run directory, no dangling link, a user's non-empty
    directory only with ``--overwrite``."""
    fields = ("out_dir", "instruct_data", "pretrain_data") if section == "compare" else ("out_dir",)
    validate(own, paths=fields)
    given = [getattr(own, f) for f in fields[1:]] if section == "compare" else [data.data]
    inputs = tuple(p for p in given if p and p != "default" and Path(p).exists())
    check_claim(own.out_dir, "study", own.overwrite, "--out-dir", inputs=inputs)


def _compare(args: argparse.Namespace) -> int:
    from ..eval.stats import MIN_SEEDS
    from ..workflows.compare import run_compare
    from ..workflows.compare_report import best_lines, paper_table, verdict_lines

    cc, study = _study(args, COMPARE_FIXED, "compare")
    result = run_compare(cc, study, command=command_line(args))
    for name, es in result.report["eval_sets"].items():
        res = result.report["results"][name]
        print(f"\n{es['label']}\n\n{paper_table(res, ('log2_mse', 'log2_mse_st'))}\n")
        print("\n".join(best_lines(res)))
        print(
            f"\nVerdicts (95% intervals of paired differences; a finding only with {MIN_SEEDS}+ seeds and intervals "
            "over sequences and seeds that exclude 0):"
        )
        print("\n".join(verdict_lines(result.report["verdicts"][name])))
    print("\nwrote " + ", ".join(str(p) for p in result.files))
    return 0


def _proxies(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..eval.result import json_safe
    from ..interp.proxies import compare_proxies, proxies, proxy_lines
    from ..interp.store import FeatureData

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else [Path(f).name for f in args.features]
    if len(labels) != len(args.features) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels: give {len(args.features)} distinct names, one per features directory")
    if args.out:  # before anything is read: not inside an input or a chatsae output folder, never a user's file
        check_output_file(args.out, "--out", inputs=tuple(args.features))
    named = {lab: proxies(FeatureData(f), n_tokens=args.n_tokens) for lab, f in zip(labels, args.features, strict=True)}
    for lab, p in named.items():
        auc = "-" if p["explanation_auc"] is None else f"{p['explanation_auc']:.3f}"
        print(
            f"{lab}: {p['live']}/{p['d_sae']} live latents, token-explanation AUC {auc} over {p['scored_latents']}, "
            f"template-selective {p['template_selective']} ({100 * p['template_selective_share']:.1f}%), dead "
            f"{100 * p['dead_fraction']:.1f}%, dense {100 * p['dense_fraction']:.1f}%, L0 {p['l0']:.1f}"
        )
        for cls, c in (p.get("by_class") or {}).items():
            cls_auc = "-" if c["explanation_auc"] is None else f"{c['explanation_auc']:.3f}"
            print(
                f"  {cls} latents: {c['live']} ({100 * c['share_of_live']:.1f}% of live), token-explanation AUC "
                f"{cls_auc} over {c['scored_latents']}"
            )
    comparison = compare_proxies(named)
    print("\n".join(proxy_lines(comparison)))
    if args.out:
        write_output_file(
            args.out, json.dumps(json_safe({"proxies": named, "comparison": comparison}), indent=2), "--out"
        )
        print(f"wrote {args.out}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from ..workflows.sweep import gap_lines, run_sweep

    sc, study = _study(args, SWEEP_FIXED, "sweep")
    report, files = run_sweep(sc, study, command=command_line(args))
    for name, es in report["eval_sets"].items():
        print(f"\n{es['label']}: {len(report['rows'][name])} SAEs")
        print("\n".join(gap_lines(report["gaps"].get(name, {}))))
    print("\nwrote " + ", ".join(str(p) for p in files))
    return 0
