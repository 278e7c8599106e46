"""Markdown tables of a steering-quality JSON (``steering_quality.py --out``): per group (the top special-token
latents, the matched random latents) and alpha, the mean answer NLL per token (and gsm8k accuracy when measured) with
its 95% bootstrap interval over items, the paired change from alpha 0, and the verdicts of top vs random per alpha.

    python scripts/results/steering_quality_table.py docs/results/steering/quality_nll.json \\
        > docs/results/steering/quality_nll.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def interval(d: dict[str, float], digits: int = 3) -> str:
    return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def main() -> None:
    path = Path(sys.argv[1])
    q = json.loads(path.read_text())
    s = q["summary"]
    metrics = [m for m in ("nll", "accuracy") if any(m in e for g in s["groups"].values() for e in g.values())]
    print(f"# Steering quality: `{path.name}`\n")
    print(f"- SAE `{q['sae']}`, data `{q['data']}`, {q['n_items']} items (seed {q['seed']})")
    print(f"- top special-token latents {q['latents']}, matched random latents {q['random_latents']}")
    print(
        "- activation scale (mean max activation on the items' prompts): "
        + ", ".join(f"{k}: {v:.1f}" for k, v in q["scale"].items())
    )
    print(
        "- each cell: group mean over its latents [95% bootstrap interval over items]; change: paired difference "
        "from alpha 0\n"
    )
    for m in metrics:
        name = "answer NLL per token (nats)" if m == "nll" else "gsm8k accuracy (greedy)"
        print(f"## {name}\n")
        print("| group | alpha | value | change from alpha 0 |\n|---|---:|---:|---:|")
        for g, by_alpha in s["groups"].items():
            for alpha, e in by_alpha.items():
                change = next(v for k, v in e.items() if k.startswith(f"{m}_vs_alpha_"))
                print(f"| {g} | {float(alpha):g} | {interval(e[m])} | {interval(change)} |")
        print()
    print("## Top vs random, per alpha (paired difference top - random)\n")
    print("| metric | alpha | difference | verdict |\n|---|---:|---:|---|")
    for p in s["pairs"]:
        print(f"| {p['metric']} | {p['alpha']:g} | {interval(p['difference'])} | {p['verdict']} |")


if __name__ == "__main__":
    main()
