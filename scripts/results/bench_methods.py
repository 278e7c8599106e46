"""FAST vs BT(F) vs BT(P) on `chatsae bench`'s sparse probing: mean test accuracy per method over training seeds
(t-interval over seeds) and the paired differences FAST − BT(F) and FAST − BT(P) (same seed index, t-interval over
seeds), from the ``bench.json`` files of one `chatsae compare` run's SAEs.

    python scripts/results/bench_methods.py BENCH_ROOT ARCH > table.md

``BENCH_ROOT/<method>_<arch>[_seedN]/bench.json`` (the compare run's folder names). bench.json holds no per-item
predictions, so there is no paired interval over test items: by the project's rule (a finding needs intervals over
items and over seeds that exclude 0) no verdict is stated; the seed intervals are reported as they are.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from chatsae.eval.stats import Interval, t_interval

METHODS = ("fast", "bt-f", "bt-p")
LABELS = {"fast": "FAST", "bt-f": "BT(F)", "bt-p": "BT(P)"}
KEYS = ("llm", "sae", "sae_top_1", "sae_top_5", "sae_top_20")
KEY_LABELS = {"llm": "dense raw", "sae": "all latents", "sae_top_1": "k=1", "sae_top_5": "k=5", "sae_top_20": "k=20"}


def runs(root: Path, method: str, arch: str) -> list[Path]:
    """The bench folders of ``method`` x ``arch``, seed order (the first seed has no suffix)."""
    base = root / f"{method}_{arch}"
    seeds = sorted(root.glob(f"{method}_{arch}_seed*"), key=lambda p: int(p.name.rsplit("seed", 1)[1]))
    return [p for p in (base, *seeds) if (p / "bench.json").is_file()]


def accuracies(path: Path) -> dict[str, dict[str, float]]:
    """``{task: {key: mean test accuracy over the task's probes}}`` of one bench.json."""
    tasks = json.loads((path / "bench.json").read_text())["tasks"]
    return {t: {k: float(v["mean"][k]["accuracy"]) for k in KEYS if k in v["mean"]} for t, v in tasks.items()}


def cell(iv: Interval) -> str:
    if math.isnan(iv.low):
        return f"{iv.value:.3f}"
    return f"{iv.value:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("arch")
    a = ap.parse_args(argv)
    acc = {m: [accuracies(p) for p in runs(a.root, m, a.arch)] for m in METHODS}
    n = min(len(v) for v in acc.values())
    if n == 0:
        raise SystemExit(f"{a.root}: no bench.json for some method of {a.arch}")
    tasks = sorted(acc["fast"][0])
    keys = [k for k in KEYS if k in acc["fast"][0][tasks[0]]]
    print(f"{a.arch}: mean test accuracy over {n} seeds [95% t-interval over seeds]\n")
    print("| task | method | " + " | ".join(KEY_LABELS[k] for k in keys) + " |")
    print("|---|---|" + "---:|" * len(keys))
    for t in tasks:
        for m in METHODS:
            row = [cell(t_interval([s[t][k] for s in acc[m][:n]])) for k in keys]
            print(f"| {t} | {LABELS[m]} | " + " | ".join(row) + " |")
    print(
        f"\nPaired differences (same seed index), {n} seeds "
        "[95% t-interval over seeds; no item-level interval, so no verdict]:\n"
    )
    print("| task | pair | " + " | ".join(KEY_LABELS[k] for k in keys) + " |")
    print("|---|---|" + "---:|" * len(keys))
    for t in tasks:
        for other in ("bt-f", "bt-p"):
            diffs = [cell(t_interval([acc["fast"][i][t][k] - acc[other][i][t][k] for i in range(n)])) for k in keys]
            print(f"| {t} | FAST − {LABELS[other]} | " + " | ".join(diffs) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
