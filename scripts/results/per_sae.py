"""One CSV row per trained SAE and evaluation set of a study directory (``chatsae compare`` / ``sweep``): the run,
its settings, the headline metrics of its ``eval_<set>.json`` and its training throughput (the per-seed
values behind the reports' means).

    python scripts/results/per_sae.py runs/compare_seeds > docs/results/compare/seeds/per_sae.csv
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from chatsae.eval.result import read_result
from chatsae.workflows.study import summarize

KEYS = (
    "l0_no_pos0",
    "fvu_no_pos0",
    "log2_mse_no_pos0",
    "log2_mse_st_no_pos0",
    "log2_mse_st_strict_no_pos0",
    "delta_lm_loss",
    "kl",
    "ce_recovered",
    "dead_fraction",
    "freq_gt_10pct",
    "freq_gt_1pct",
)


def main() -> None:
    root = Path(sys.argv[1])
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(
        [
            "run",
            "architecture",
            "seed",
            "sparsity_coef",
            "k",
            "eval_set",
            "sequences",
            "tokens",
            *KEYS,
            "train_tokens_per_s",
            "dead_window_cap",
            "eval_seconds",
        ]
    )
    for path in sorted(root.glob("*/eval_*.json")):
        res = read_result(path)
        config = json.loads((path.parent / "sae" / "config.json").read_text())
        study = config.get("study", {})
        row = [
            path.parent.name,
            study.get("architecture"),
            config["train"].get("seed"),
            study.get("sparsity_coef"),
            study.get("k"),
            path.stem.removeprefix("eval_"),
            res.setup["sequences"],
            res.setup["tokens"],
        ]
        values = summarize(res)
        row += [values.get(k) for k in KEYS]
        summary = json.loads((path.parent / "sae" / "training_summary.json").read_text())
        row += [summary.get("tokens_per_s"), config["train"].get("dead_window_cap"), res.setup.get("seconds")]
        out.writerow(["" if v is None else f"{v:.6g}" if isinstance(v, float) else v for v in row])


if __name__ == "__main__":
    main()
