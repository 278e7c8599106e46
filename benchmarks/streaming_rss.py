"""Peak memory of streaming training (``--cache none``) at two token budgets: it must not grow with the budget.

Each budget runs in a fresh child process (``chatsae train --cache none`` on the embedded model, default data, no
held-out evaluation) whose peak RSS (``ru_maxrss``) is printed, then the ratio of the two. The mixing buffer
(``--buffer-tokens``) and a few queued harvest windows bound the activations in memory; the model dominates the rest.

    .venv/bin/python benchmarks/streaming_rss.py                        # 0.3M and 3M tokens (3M: ~40 min on 2 CPUs)
    .venv/bin/python benchmarks/streaming_rss.py --hook resid_post.1     # the same budgets, a 2-layer forward
    .venv/bin/python benchmarks/streaming_rss.py --budgets 8192 32768 --buffer-tokens 8192  # a quick look
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(budget: int, out_dir: str, device: str, buffer_tokens: int, hook: str | None) -> None:
    from chatsae.activations.harvest import HarvestConfig
    from chatsae.activations.pipeline import DataConfig
    from chatsae.train import TrainConfig
    from chatsae.workflows import RunConfig, RunSpec, train_run

    spec = RunSpec(
        run=RunConfig(out_dir=out_dir, evaluate=False, overwrite=True),
        train=TrainConfig(total_tokens=budget, progress=False, device=device, checkpoint_every=0),
        data=DataConfig(cache="none", model_device=device, buffer_tokens=buffer_tokens, hook=hook),
        harvest=HarvestConfig(shard_tokens=min(65_536, buffer_tokens)),
        report=lambda m: None,
    )
    res = train_run(spec)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"RESULT {budget} {peak_mib:.1f} {res.summary['tokens_per_s']:.1f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", type=int, nargs=2, default=[300_000, 3_000_000], help="two token budgets")
    ap.add_argument("--device", default="cpu", help="device for the model and the SAE (default cpu)")
    ap.add_argument("--buffer-tokens", type=int, default=65_536, help="mixing-buffer size (default 65536)")
    ap.add_argument(
        "--hook",
        help="hook point (default: the middle layer); a shallow one (resid_post.1) makes the "
        "harvest ~8x cheaper without changing what is measured: the buffer bounds memory at any depth",
    )
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.out_dir, args.device, args.buffer_tokens, args.hook)
        return 0
    peaks = []
    with tempfile.TemporaryDirectory(prefix="chatsae_rss_") as tmp:
        for budget in args.budgets:
            t0 = time.perf_counter()
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(budget),
                "--out-dir",
                str(Path(tmp) / str(budget)),
                "--device",
                args.device,
                "--buffer-tokens",
                str(args.buffer_tokens),
            ]
            cmd += ["--hook", args.hook] if args.hook else []
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((r for r in out.stdout.splitlines() if r.startswith("RESULT ")), None)
            if out.returncode or line is None:
                print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
                return 1
            _, _, peak, tok_s = line.split()
            peaks.append(float(peak))
            print(
                f"budget {budget:>10,} tokens: peak RSS {float(peak):8.1f} MiB, training {float(tok_s):,.0f} tok/s, "
                f"wall {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
    ratio = peaks[1] / peaks[0]
    print(
        f"peak RSS ratio (budget {args.budgets[1]:,} / {args.budgets[0]:,}): {ratio:.3f} "
        f"({'within' if abs(ratio - 1) <= 0.10 else 'OUTSIDE'} 10%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
