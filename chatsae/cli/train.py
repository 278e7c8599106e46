"""``chatsae train`` and ``chatsae harvest``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..core.config import load_config_file
from ..core.constants import METRICS_LOG_FILE, RUN_CONFIG_FILE
from ..sae import SAEConfig
from ..train.config import TrainConfig
from ..workflows.train_run import RunConfig, count_rows, harvest_counts, hook_hint, robust_rows, warn_dropped
from .common import add_command, configs_from_args

ALIASES = {"architecture": ["arch"], "d_sae": ["width"]}


def _harvest_options_cls() -> type:
    from ..activations.harvest import HarvestConfig

    return HarvestConfig


def _data_cls() -> type:
    from ..activations.pipeline import DataConfig

    return DataConfig


def register(sub: Any) -> None:
    train_cfgs = {
        "run": RunConfig,
        "sae": SAEConfig,
        "train": TrainConfig,
        "data": _data_cls(),
        "harvest": _harvest_options_cls(),
    }
    add_command(
        sub,
        "train",
        "Train an SAE: harvest activations of a model on chat/text data (FAST, BT(F) or BT(P)) into a cache and "
        "train on them, or train on saved activations (--activations). With no options: the main job (FAST JumpReLU "
        "8x SAE on the middle residual stream of the embedded SmolLM2-135M-Instruct, on chatsae's own chat data).",
        _train,
        train_cfgs,
        aliases=ALIASES,
    )
    add_command(
        sub,
        "harvest",
        "Harvest activations of a model on data into an on-disk cache (sharded, resumable) for `train --activations`.",
        _harvest,
        {"run": RunConfig, "data": _data_cls(), "harvest": _harvest_options_cls()},
        aliases=ALIASES,
    )


def _train(args: argparse.Namespace) -> int:
    from ..workflows.multi_sae import train_runs
    from ..workflows.train_run import RunSpec

    cfgs = configs_from_args(args)
    from_file = load_config_file(args.config).get("sae") or {} if args.config else {}
    d_sae_given = hasattr(args, "d_sae") or "d_sae" in from_file
    t0 = time.perf_counter()
    spec = RunSpec(
        run=cfgs["run"],
        sae=cfgs["sae"],
        train=cfgs["train"],
        data=cfgs["data"],
        harvest=cfgs["harvest"],
        d_sae=cfgs["sae"].d_sae if d_sae_given else None,
    )
    status = 0
    for result in train_runs(spec):  # one result, or one per hook of --hooks
        status = max(status, _report(result, t0))
    return status


def _report(result: Any, t0: float) -> int:
    """Print the result table of one trained SAE; 1 if its quality check failed."""
    from ..workflows.train_run import count_rows

    if result.sae_dir is None:
        return 0
    s = result.summary
    rows: dict[str, Any] = {
        "tokens trained": f"{s['tokens']:,}",
        "train L0": f"{s.get('train_l0', float('nan')):.1f}",
        "train FVU": f"{s.get('train_fvu', float('nan')):.4f}",
        "dead %": f"{100 * s.get('train_dead_frac', 0):.2f}",
        **robust_rows(s),
        **count_rows(s),
        **result.rows,
    }
    rows["SAE"] = str(result.sae_dir)
    rows["config"] = str(result.sae_dir / RUN_CONFIG_FILE)
    rows["metrics log"] = str(result.out_dir / METRICS_LOG_FILE)
    rows["wall time"] = f"{time.perf_counter() - t0:.0f}s"
    failed = s.get("status") == "failed_quality"
    if failed:
        rows["status"] = "FAILED (failed_quality)"
    _print_table("chatsae train: result", rows)
    if failed:  # the SAE is saved, but a run that reconstructs worse than the mean is not a success
        print(f"chatsae train: FAILED: {s.get('failure', 'final FVU too high')}", file=sys.stderr, flush=True)
        return 1
    return 0


def _print_table(title: str, rows: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value")
    for k, v in rows.items():
        table.add_row(k, str(v))
    Console().print(table)


def _harvest(args: argparse.Namespace) -> int:
    from ..activations.pipeline import harvest_hooks
    from ..activations.variance import dominance_note

    cfgs = configs_from_args(args)
    run, data, opts = cfgs["run"], cfgs["data"], cfgs["harvest"]
    if data.cache == "none":
        raise ValueError(
            "--cache none does not apply to chatsae harvest: a harvest writes the activation cache; drop it (or use "
            "`chatsae train --cache none` to train while harvesting, without a cache)"
        )
    if run.activations:
        raise ValueError("--activations does not apply to chatsae harvest: it harvests from --model; drop it")
    out_dir = Path(run.out_dir) if run.out_dir else Path("runs") / f"harvest_{Path(data.model).name}_{hook_hint(data)}"
    dirs, manifests, stats, context = harvest_hooks(data, opts, out_dir, max_tokens=opts.max_tokens, resume=run.resume)
    from ..core.distributed import rank

    if rank() != 0:  # under torchrun rank 0 reports for all
        return 0
    counts = harvest_counts(context, next(iter(manifests.values())).info)
    if counts:
        warn_dropped(counts, lambda line: print(line, file=sys.stderr, flush=True))
    rows = {k: v for k, v in count_rows({"data_counts": counts}).items() if k != "outlier vectors dropped"}
    for hook, manifest in manifests.items():  # one cache per hook (--hooks: all from the same forward passes)
        _print_table(
            "chatsae harvest",
            {
                "cache": str(dirs[hook]),
                "model": manifest.model,
                "hook": manifest.hook,
                "method": manifest.method,
                "tokens": f"{manifest.n_tokens:,}",
                "shards": len(manifest.shards),
                **stats.as_dict(),
                **rows,
            },
        )
        note = dominance_note(manifest.info.get("channel_variance"), manifest.hook)
        if note:  # a few massive channels: FVU/MSE of an SAE trained here mostly measure them
            print(note, flush=True)
    empty = [str(hook) for hook, manifest in manifests.items() if manifest.n_tokens == 0]
    if empty:
        print(
            f"chatsae harvest: FAILED: 0 vectors harvested at {', '.join(empty)}"
            + (f" ({'; '.join(f'{k}: {v}' for k, v in rows.items())})" if rows else "")
            + "; check --data, --dedup-n, --skip-bad and --exclude-* options",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0
