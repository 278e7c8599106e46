"""Paired verdicts between two SAE settings evaluated on the same records (e.g. TopK with and without
``--dead-window-cap``): the difference A - B of each metric with the paired bootstrap over evaluation sequences and,
with 2+ seeds each, the t-interval over seeds; a verdict only when both intervals exclude 0
(``chatsae.eval.stats.paired_verdict``, the code behind ``chatsae compare``'s verdicts).

    python scripts/results/sweep_paired.py --a runs/sweep_topk_cap/topk_k20*/eval_heldout.json --a-label "TopK cap" \\
        --b runs/sweep_seeds/topk_k20*/eval_heldout.json --b-label "TopK" > docs/results/sweep/auxk_cap.md
"""

from __future__ import annotations

import argparse
import json

from chatsae.eval.result import read_result
from chatsae.eval.stats import paired_verdict
from chatsae.workflows.compare import SUMMARY
from chatsae.workflows.study import cell, md_table, summarize

METRICS = {
    "fvu_no_pos0": "FVU without position 0",
    "delta_lm_loss": "delta LM loss",
    "kl": "KL",
    "log2_mse_no_pos0": "log2 MSE without position 0",
    "l0_no_pos0": "L0 without position 0",
    "dead_fraction": "dead latents",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", nargs="+", required=True, help="eval JSON of setting A, one per seed")
    ap.add_argument("--b", nargs="+", required=True, help="eval JSON of setting B, one per seed (same records)")
    ap.add_argument("--a-label", default="A")
    ap.add_argument("--b-label", default="B")
    args = ap.parse_args()
    a, b = [read_result(p) for p in args.a], [read_result(p) for p in args.b]
    tokens = {r.setup["tokens"] for r in a + b}
    if len(tokens) != 1:
        raise SystemExit(f"the evaluations cover different records (token counts {sorted(tokens)})")
    rows = []
    for key, name in METRICS.items():
        subset, metric = SUMMARY[key]
        v = paired_verdict(a, b, subset, metric, (args.a_label, args.b_label, name))
        mean_a = sum(summarize(r)[key] or 0.0 for r in a) / len(a)
        mean_b = sum(summarize(r)[key] or 0.0 for r in b) / len(b)
        bounds = "; ".join(
            f"{what} [{cell(iv[0])}, {cell(iv[1])}]" for what in ("sequences", "seeds") if (iv := v[what]) is not None
        )
        rows.append([name, cell(mean_a), cell(mean_b), cell(v["difference"]), bounds, v["verdict"]])
    print(
        f"{args.a_label}: {len(a)} seed(s); {args.b_label}: {len(b)} seed(s); {tokens.pop():,} evaluation tokens, "
        f"{a[0].setup['sequences']} sequences\n"
    )
    print(md_table(["metric", args.a_label, args.b_label, "A - B", "95% intervals", "verdict"], rows))
    print("\nfiles: " + json.dumps({"a": args.a, "b": args.b}))


if __name__ == "__main__":
    main()
