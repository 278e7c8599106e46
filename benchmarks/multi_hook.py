"""Three SAEs from one harvest (``--hooks``) against three separate runs, on the embedded model.

Both sides train the same three SAEs (resid_post.8, .15, .22; default data, FAST, JumpReLU) on the same budget, with
the model loaded once beforehand (load time excluded) and no held-out evaluation; the several-hook run harvests all
three hooks in one forward pass per batch (stopping after layer 22), the separate runs harvest once per hook. Prints
both wall times and their ratio (< 1: the shared harvest is faster).

    .venv/bin/python benchmarks/multi_hook.py                   # 100k tokens per SAE (~15 min on 2 CPU cores)
    .venv/bin/python benchmarks/multi_hook.py --tokens 20000    # a quick look
    .venv/bin/python benchmarks/multi_hook.py --cache none      # streamed: 3 SAEs together vs 3 streaming runs
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

HOOKS = ("resid_post.8", "resid_post.15", "resid_post.22")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=100_000, help="training tokens per SAE")
    ap.add_argument("--device", default="cpu", help="device for the model and the SAEs (default cpu)")
    ap.add_argument(
        "--cache",
        default="disk",
        choices=("disk", "none"),
        help="disk (default): one cache per hook; none: streamed, the 3 SAEs train together",
    )
    args = ap.parse_args()

    from chatsae.activations.pipeline import DataConfig
    from chatsae.models import load_model
    from chatsae.train import TrainConfig
    from chatsae.workflows import RunConfig, RunSpec, train_run
    from chatsae.workflows.multi_sae import train_runs

    data = DataConfig(model_device=args.device, cache=args.cache)
    model = load_model("embedded", dtype="float32" if args.device == "cpu" else "bfloat16", device=args.device)
    with tempfile.TemporaryDirectory(prefix="chatsae_hooks_") as tmp:

        def spec(out: str, **data_kw: str) -> RunSpec:
            return RunSpec(
                run=RunConfig(out_dir=str(Path(tmp) / out), evaluate=False),
                train=TrainConfig(total_tokens=args.tokens, progress=False, device=args.device, checkpoint_every=0),
                data=dataclasses.replace(data, **data_kw),
                model_and_tokenizer=model,
                report=lambda m: None,
            )

        t0 = time.perf_counter()
        together = train_runs(spec("together", hooks=",".join(HOOKS)))
        t_together = time.perf_counter() - t0
        t0 = time.perf_counter()
        separate = [train_run(spec(f"separate_{h}", hook=h)) for h in HOOKS]
        t_separate = time.perf_counter() - t0
    for h, a, b in zip(HOOKS, together, separate, strict=True):
        print(f"{h}: train FVU together {a.summary['train_fvu']:.4f}, separate {b.summary['train_fvu']:.4f}")
    print(
        f"--cache {args.cache}: 3 hooks, one harvest: {t_together:.1f}s; 3 separate runs: {t_separate:.1f}s; "
        f"ratio {t_together / t_separate:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
