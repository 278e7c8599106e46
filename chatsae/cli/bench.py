"""``chatsae bench SAE_DIR``: SAEBench-style sparse probing and first-letter absorption, offline
(docs/evaluation-suite.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command, configs_from_args

HELP = (
    "SAEBench-style evaluations of a saved SAE, offline: k-sparse probing (k latents picked by class-mean "
    "difference, logistic probes; against a dense probe on the raw activations) on text-level tasks (Brown genre, "
    "source of a chat) and chat token-level tasks (role of a token, template vs content), and first-letter feature "
    "absorption. Prints a table; writes bench.json, SAEBench-layout JSON files and report.txt to --out-dir."
)
TASK_HELP = (
    "a probing task, repeatable: genre=BROWN.jsonl (ids like ca01) | source=A.json,B.jsonl,... (class = file) | "
    "role=CHAT.jsonl | template=CHAT.jsonl ('default' = chatsae's own chat data). "
    "Default: role=default and template=default"
)


def register(sub: argparse._SubParsersAction) -> None:
    from ..workflows.bench import BenchConfig

    p = add_command(sub, "bench", HELP, run, configs={"bench": BenchConfig})
    p.add_argument("sae_dir", metavar="SAE_DIR", help="directory of a saved SAE (cfg.json + sae_weights.safetensors)")
    p.add_argument("--task", action="append", default=None, metavar="NAME=FILES", help=TASK_HELP)
    p.add_argument("--no-tasks", action="store_true", help="run no probing task (absorption only)")


def run(args: argparse.Namespace) -> int:
    from ..workflows.bench import default_out_dir, run_bench
    from ..workflows.bench_data import parse_task
    from ..workflows.bench_report import format_table

    tasks_given = args.__dict__.pop("task", None)
    no_tasks = args.__dict__.pop("no_tasks", False)
    cfg = configs_from_args(args)["bench"]
    if no_tasks and tasks_given:
        raise ValueError("--no-tasks and --task exclude each other")
    specs = [] if no_tasks else [parse_task(t) for t in (tasks_given or ["role=default", "template=default"])]
    if not specs and not cfg.absorption:
        raise ValueError("nothing to run: --no-tasks with --no-absorption")
    names = [s.name for s in specs]
    if len(set(names)) < len(names):
        raise ValueError(f"--task: each task at most once, got {', '.join(names)}")
    result = run_bench(Path(args.sae_dir), specs, cfg)
    print(format_table(result))
    out = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(args.sae_dir)
    print(f"wrote {out / 'bench.json'}")
    return 0
