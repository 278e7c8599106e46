"""Cost of evaluating one SAE, in clean forward passes of the same model over the same records.

    .venv/bin/python benchmarks/eval_cost.py [--records 50] [--hook resid_post.15] [--repeats 2] [--no-restart]
                                             [--threads N] [--cpu-time] [--also-full] [--together N] [--sae DIR]
                                             [--device cuda] [--dtype bfloat16]

Loads the embedded SmolLM2-135M-Instruct, takes the first ``--records`` samples of chatsae's own chat data (FAST
sequences, the batches ``evaluate`` makes) and times, best of ``--repeats`` interleaved rounds: a clean forward with
logits over all batches; ``evaluate()`` of a randomly initialised JumpReLU SAE (8x width) with the LM-loss passes;
the same with the zero-ablation losses cached, and without them (``zero_ablation=False``); without running the prefix
every sequence shares once (``share_prefix=False``: the system prompt of the chat template); ``evaluate_many`` of
``--together`` SAEs on one clean pass (what ``chatsae compare``/``sweep`` do), per SAE; with ``--also-full`` also
without restarting at the hook; and the floor of an evaluation without the zero-ablated pass: the clean forward plus
one pass restarted at the hook with the activation unchanged (no SAE, no losses), with whole rows and with the shared
prefix. ``--sae DIR`` evaluates a saved SAE
(e.g. a trained one, at its realistic L0) instead of the random one, on the same records and settings (its metadata
is replaced by the hook). The last line reads "clean forward Xs, evaluate Ys, ratio Z forward passes" (Y without the
cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from chatsae.activations.pipeline import default_data_path
from chatsae.data.formats import read_records
from chatsae.data.sequences import bucket_batches, pad_batch
from chatsae.eval import EvalConfig, evaluate
from chatsae.eval.config import resolve_config
from chatsae.eval.evaluate import build_sequences, evaluate_many
from chatsae.models import HookPoint, d_model, load_model
from chatsae.models.prefix import clean_forward_shared, edited_forward_shared, shared_prefix_length
from chatsae.models.resume import clean_forward, resumed_logits
from chatsae.sae import SAEConfig, create_sae, load_sae


def round_times(repeats: int, fns: dict[str, Callable[[], object]], cpu: bool) -> dict[str, list[float]]:
    """Each ``fn``'s time in each of ``repeats`` rounds (one call of each per round, interleaved, so that load from
    other processes hits all of them alike), in seconds: wall time, or with ``cpu`` this process's CPU time."""
    clock = time.process_time if cpu else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return times


def ratio_text(times: dict[str, list[float]], name: str, per: int = 1) -> str:
    """``name``'s median seconds and its cost in clean forward passes: the median (min-max) of the per-round ratios
    to that round's clean forward (``per``: divide by this many SAEs)."""
    ratios = [t / per / c for t, c in zip(times[name], times["clean"], strict=True)]
    return (
        f"{statistics.median(times[name]):.2f}s, ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}-"
        f"{max(ratios):.2f}) forward passes"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50)
    ap.add_argument("--hook", default="resid_post.15")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-restart", action="store_true", help="full forward passes for the edited passes")
    ap.add_argument("--splice-first-position", action="store_true", help="also splice position 0")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--also-full", action="store_true", help="also time evaluate() without restart")
    ap.add_argument("--cpu-time", action="store_true", help="time in process CPU seconds instead of wall seconds")
    ap.add_argument(
        "--together", type=int, default=4, help="SAEs evaluated on one clean pass (evaluate_many; 1 = not timed)"
    )
    ap.add_argument("--sae", default=None, help="a saved SAE to evaluate instead of a random JumpReLU one")
    ap.add_argument("--device", default="cpu", help="where the model runs (cuda: timings synchronise the device)")
    ap.add_argument("--dtype", default="float32", help="the model's dtype (float32, bfloat16)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model("embedded", dtype=args.dtype, device=args.device)
    dev = next(model.parameters()).device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model.eval()
    records = list(read_records(default_data_path(), limit=args.records))
    cfg = EvalConfig(
        method="fast",
        hook=args.hook,
        max_samples=None,
        progress=False,
        restart=not args.no_restart,
        splice_first_position=args.splice_first_position,
    )
    seqs = build_sequences(records, tok, cfg)
    buckets = bucket_batches(seqs, max_tokens=cfg.batch_tokens, max_batch_size=cfg.max_batch_size)
    batches = [pad_batch(b, tok.pad_token_id) for b in buckets]
    batches = [pb._replace(input_ids=pb.input_ids.to(dev), attention_mask=pb.attention_mask.to(dev)) for pb in batches]
    n_tok = sum(len(s.input_ids) for s in seqs)

    @torch.inference_mode()
    def clean() -> None:
        for pb in batches:
            model(input_ids=pb.input_ids, attention_mask=pb.attention_mask, use_cache=False).logits.sum()
        sync()

    @torch.inference_mode()
    def floor() -> None:
        for pb in batches:
            _, ckpt = clean_forward(model, args.hook, pb.input_ids, pb.attention_mask)
            resumed_logits(model, ckpt, pb.input_ids, pb.attention_mask, lambda a: a).sum()
        sync()

    @torch.inference_mode()
    def floor_shared() -> None:
        for pb in batches:
            length = shared_prefix_length(pb.input_ids, pb.attention_mask)
            if not length:
                raise SystemExit("floor with the shared prefix: a batch without a shared prefix")
            _, ckpt, shared = clean_forward_shared(model, point, pb.input_ids, pb.attention_mask, length)
            edited_forward_shared(model, shared, pb.input_ids, pb.attention_mask, ckpt.act).rest.sum()
        sync()

    point = HookPoint.parse(args.hook)
    torch.manual_seed(0)
    d = d_model(model)
    sae = create_sae(SAEConfig("jumprelu", d_in=d, d_sae=8 * d, metadata={"hook_name": args.hook}))
    if args.sae:
        sae = load_sae(args.sae)
        sae.cfg.metadata = {"hook_name": args.hook}  # not its training data / holdout: the same records as above
    group = [sae] + [
        create_sae(SAEConfig("jumprelu", d_in=d, d_sae=8 * d, metadata={"hook_name": args.hook}), seed=i + 1)
        for i in range(args.together - 1)
    ]
    resolved = resolve_config(cfg, sae.cfg.metadata)
    cache: dict = {}
    evaluate(sae, model, tok, records, cfg, zero_ablation_cache=cache)  # fills the cache
    full = dataclasses.replace(cfg, restart=False)
    runs = {
        "clean": clean,
        "floor": floor,
        "floor_shared": floor_shared,
        "evaluate": lambda: evaluate(sae, model, tok, records, cfg),
        "cached": lambda: evaluate(sae, model, tok, records, cfg, zero_ablation_cache=cache),
        "no_zero": lambda: evaluate(sae, model, tok, records, dataclasses.replace(cfg, zero_ablation=False)),
        "whole_rows": lambda: evaluate(sae, model, tok, records, dataclasses.replace(cfg, share_prefix=False)),
    }
    if args.together > 1:
        runs["together"] = lambda: evaluate_many(group, model, tok, records, [resolved] * len(group))
    if args.also_full and cfg.restart:
        runs["full"] = lambda: evaluate(sae, model, tok, records, full)
    t = round_times(args.repeats, runs, args.cpu_time)
    print(
        f"{len(seqs)} sequences, {n_tok:,} tokens, {len(batches)} batches, {torch.get_num_threads()} threads, "
        f"hook {args.hook}, {dev} {args.dtype}, restart {cfg.restart}, {'CPU' if args.cpu_time else 'wall'} "
        f"seconds; medians of {args.repeats} rounds, ratio = median (min-max) of the per-round ratios to the "
        "clean forward"
    )
    print(f"floor (clean + one restarted pass, no SAE, no losses) {ratio_text(t, 'floor')}")
    print(f"floor with the shared prefix {ratio_text(t, 'floor_shared')}")
    if "full" in t:
        print(f"evaluate without restart {ratio_text(t, 'full')}")
    if "together" in t:
        print(f"evaluate_many of {len(group)} SAEs, per SAE: {ratio_text(t, 'together', len(group))}")
    print(f"evaluate with --no-zero-ablation {ratio_text(t, 'no_zero')}")
    print(f"evaluate with --no-share-prefix (every row in full) {ratio_text(t, 'whole_rows')}")
    print(f"evaluate with the zero-ablation cached {ratio_text(t, 'cached')}")
    print(
        f"clean forward {statistics.median(t['clean']):.2f}s ({min(t['clean']):.2f}-{max(t['clean']):.2f}), "
        f"evaluate {ratio_text(t, 'evaluate')}"
    )


if __name__ == "__main__":
    main()
