"""``chatsae eval SAE_DIR``: reconstruction, sparsity and delta-LM-loss metrics of a saved SAE (docs/metrics.md)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..core.constants import EVAL_FILE
from ..core.ownership import record
from ..core.utils import check_output_file
from .common import add_command, configs_from_args

HELP = (
    "Evaluate a saved SAE on held-out records: MSE (FAST Eq. 7) and MSE_st, FVU, cosine, L0, dead/dense latents, "
    "delta LM loss, KL and CE recovered, split by token class, with and without position 0. Writes a JSON file "
    "(default SAE_DIR/eval.json) and prints a table."
)


def register(sub: argparse._SubParsersAction) -> None:
    from ..eval.config import EvalConfig

    p = add_command(sub, "eval", HELP, run, configs={"eval": EvalConfig})
    p.add_argument("sae_dir", metavar="SAE_DIR", help="directory of a saved SAE (cfg.json + sae_weights.safetensors)")


def run(args: argparse.Namespace) -> int:
    from ..data.formats import read_records
    from ..eval.config import resolve_config
    from ..eval.evaluate import evaluate
    from ..eval.report import print_report
    from ..models import load_model
    from ..sae import load_sae

    sae_dir = Path(args.sae_dir)
    cfg = configs_from_args(args)["eval"]  # options are checked before anything is loaded
    given = cfg.output
    check_output_file(given or sae_dir / EVAL_FILE, "--output", (sae_dir if given else None, cfg.data), not given)
    sae = load_sae(sae_dir)
    cfg = resolve_config(cfg, sae.cfg.metadata, data_from_metadata=True)
    if cfg.data is None:
        raise ValueError("--data is required: the SAE's metadata names no eval_data")
    if cfg.hook is None:
        raise ValueError("--hook is required: the SAE's metadata has no hook_name (e.g. --hook resid_post.15)")
    model, tokenizer = load_model(cfg.model or "embedded", dtype=cfg.dtype, device=cfg.device)
    records = read_records(cfg.data, fmt=cfg.data_format)
    cfg = dataclasses.replace(cfg, output=cfg.output or str(sae_dir / EVAL_FILE))
    result = evaluate(sae, model, tokenizer, records, cfg, sae_path=str(sae_dir))
    written = Path(cfg.output or sae_dir / EVAL_FILE)
    record(written.parent, written.name)  # chatsae's file: a rerun may replace it
    print_report(result)
    print(f"wrote {cfg.output}")
    return 0
