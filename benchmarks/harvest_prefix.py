"""Harvest with the shared prefix run once (chatsae.models.prefix) against whole rows, on the same batches.

    .venv/bin/python benchmarks/harvest_prefix.py [--records 300] [--hook resid_post.15] [--repeats 5]
                                                  [--dtype float32] [--device cpu]

Loads the embedded SmolLM2-135M-Instruct, takes the first ``--records`` samples of chatsae's own chat data as FAST
sequences, batches them as the harvest does (length-bucketed, ``HarvestConfig`` defaults) and times
``activations_for_batch`` over all batches with ``share_prefix`` on and off, alternating within each of
``--repeats`` rounds. Prints the tokens per second of each (median, min-max) and, last, the median (min-max) of the
per-round speed-up; also the largest difference between the two sets of vectors.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from chatsae.activations.harvest import HarvestConfig, activations_for_batch
from chatsae.activations.pipeline import default_data_path
from chatsae.data.formats import read_records
from chatsae.data.sequences import bucket_batches, fast_sequences
from chatsae.models import HookPoint, load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=300)
    ap.add_argument("--hook", default="resid_post.15")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model, tok = load_model("embedded", dtype=args.dtype, device=args.device)
    model.eval()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    hook = HookPoint.parse(args.hook)
    seqs = list(fast_sequences(read_records(default_data_path(), limit=args.records), tok, max_length=8192))
    opts = {share: HarvestConfig(share_prefix=share) for share in (True, False)}
    batches = list(bucket_batches(seqs, max_tokens=opts[True].batch_tokens, max_batch_size=opts[True].max_batch_size))
    n_tok = sum(len(s.input_ids) for s in seqs)

    def run(share: bool) -> torch.Tensor:
        out = [activations_for_batch(model, hook, b, tok.pad_token_id, opts[share])[0] for b in batches]
        sync()
        return torch.cat(out)

    times: dict[bool, list[float]] = {True: [], False: []}
    vectors = {}
    for _ in range(args.repeats):
        for share in (False, True):
            t0 = time.perf_counter()
            vectors[share] = run(share)
            times[share].append(time.perf_counter() - t0)
    diff = float((vectors[True] - vectors[False]).abs().max())
    scale = float(vectors[False].abs().max())
    speedups = [w / s for w, s in zip(times[False], times[True], strict=True)]
    print(
        f"{len(seqs)} sequences, {n_tok:,} tokens, {len(batches)} batches, hook {hook}, {args.device} {args.dtype}, "
        f"{torch.get_num_threads()} threads, {args.repeats} rounds; largest difference {diff:.2e} (largest |x| "
        f"{scale:.3g})"
    )
    for share, name in ((False, "whole rows"), (True, "shared prefix")):
        tps = [n_tok / t for t in times[share]]
        print(f"{name}: {statistics.median(tps):,.0f} tok/s ({min(tps):,.0f}-{max(tps):,.0f})")
    print(
        f"shared prefix / whole rows: speed-up {statistics.median(speedups):.2f} ({min(speedups):.2f}-"
        f"{max(speedups):.2f})"
    )


if __name__ == "__main__":
    main()
