"""Paper scale, measured: FAST harvest of Llama-3.1-8B-Instruct / Qwen2.5-7B-Instruct shapes and the SAE step.

    python benchmarks/paper_scale.py --device cuda --config llama8b|qwen7b|tiny [--tokens 2000000] [--widths 8,16]
        [--batch-tokens 16384] [--max-padding 0.05] [--saes 3] [--max-seconds 420] [--json OUT]
        [--sequences FILE | --save-sequences FILE]

The model is the published architecture (config written below, no download) with random bfloat16 weights made on the
device, built only up to its middle layer (the paper's hook, ``resid_post.{n_layers // 2}``), so nothing past the
hook exists. The data is chatsae's bundled chat data as FAST sequences of the embedded tokenizer, token ids taken
modulo the big vocabulary, repeated up to ``--tokens``, length-bucketed by chatsae's ``bucket_batches`` and harvested
by chatsae's ``activations_for_batch`` (the harvest's per-batch path: shared prefix, padding dropped, vectors to the
host). Then the SAE step (JumpReLU, batch 4096, the Trainer's step) at each ``--widths`` x d_model, TF32 and bf16
autocast. ``--sequences`` reads the sequences that ``--save-sequences`` wrote (a machine without the embedded model).

FLOPs (``forward_flops``): 2 x the matmul weights of the blocks run x tokens run, plus attention 4 x layers x
heads x head_dim x (query positions x key positions) per row, the full square (PaLM's MFU convention, no causal
discount); a shared prefix counts once per batch, as it runs; padding never counts. The SAE step counts 12 x d_in x
d_sae per token (dense equivalent: encoder and decoder forward, twice that backward), compared with the matmul rate
this script measures. ``--max-seconds`` bounds the whole run (each phase gets a share). The shapes, the FLOP
counting and the projection are in ``paper_shapes.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_shapes import (  # noqa: E402  (re-exported: the names tests and callers use)
    CONFIGS,
    LLAMA3_ROPE,
    PAPER_TOKENS,
    PEAK_BF16_TFLOPS,
    block_weights,
    build_model,
    forward_flops,
    hook_layer,
    projection,
)
from sae_step_common import bare_step  # noqa: E402

from chatsae.activations.harvest import HarvestConfig, HarvestStats, activations_for_batch  # noqa: E402
from chatsae.data.sequences import BucketStats, TokenSequence, bucket_batches  # noqa: E402
from chatsae.models import HookPoint  # noqa: E402
from chatsae.models.prefix import can_share_prefix, shared_prefix_length  # noqa: E402
from chatsae.sae import SAEConfig, create_sae  # noqa: E402
from chatsae.train.init import input_scale  # noqa: E402

__all__ = [
    "CONFIGS",
    "LLAMA3_ROPE",
    "PAPER_TOKENS",
    "PEAK_BF16_TFLOPS",
    "SAE_BATCH",
    "block_weights",
    "build_model",
    "forward_flops",
    "hook_layer",
    "main",
    "projection",
]

SAE_BATCH = 4096
"""Vectors per SAE step."""


def chat_sequences(path: str | None) -> list[TokenSequence]:
    """FAST sequences of chatsae's bundled chat data (embedded tokenizer), or those saved in ``path``."""
    if path:
        blob = torch.load(path)
        ids, special, cls, lens = (blob[k].tolist() for k in ("input_ids", "special_mask", "token_class", "lengths"))
        out, at = [], 0
        for i, n in enumerate(lens):
            out.append(TokenSequence(ids[at : at + n], special[at : at + n], cls[at : at + n], [i] * n))
            at += n
        return out
    from chatsae.activations.pipeline import default_data_path
    from chatsae.data.formats import read_records
    from chatsae.data.sequences import fast_sequences
    from chatsae.models.loading import load_tokenizer

    return list(fast_sequences(read_records(default_data_path()), load_tokenizer("embedded")))


def save_sequences(seqs: list[TokenSequence], path: str) -> None:
    cat = lambda f: torch.tensor([x for s in seqs for x in getattr(s, f)])  # noqa: E731
    blob = {f: cat(f) for f in ("input_ids", "special_mask", "token_class")}
    torch.save({**blob, "lengths": torch.tensor([len(s.input_ids) for s in seqs])}, path)


def repeat_to(seqs: list[TokenSequence], vocab: int, tokens: int) -> list[TokenSequence]:
    """``seqs`` cycled (new sample ids) until ``tokens`` tokens, ids taken modulo ``vocab``."""
    out: list[TokenSequence] = []
    n = 0
    while n < tokens:
        s = seqs[len(out) % len(seqs)]
        m = len(s.input_ids)
        out.append(TokenSequence([t % vocab for t in s.input_ids], s.special_mask, s.token_class, [len(out)] * m))
        n += m
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def matmul_tflops(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    """Measured dense matmul rate (TF32 for float32 on CUDA), square matrices."""
    n = 8192 if device.type == "cuda" else 512
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < seconds:
        for _ in range(5):
            a @ b
        reps += 5
        sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def harvest(model: torch.nn.Module, name: str, seqs: list[TokenSequence], a: argparse.Namespace) -> dict[str, Any]:
    """Harvest through chatsae's per-batch path until the data or ``a.harvest_seconds`` ends; keeps the first
    ``a.keep`` vectors (float32, host) for the SAE phase."""
    device = next(model.parameters()).device
    opts = HarvestConfig(batch_tokens=a.batch_tokens, max_batch_size=a.max_batch_size, share_prefix=a.share_prefix)
    window = max(1, round(a.window_tokens * len(seqs) / sum(len(s.input_ids) for s in seqs)))
    bstats = BucketStats()
    batches = bucket_batches(seqs, a.batch_tokens, a.max_batch_size, window, 0, bstats, a.max_padding or None)
    hook, shares = HookPoint("resid_post", hook_layer(name)), a.share_prefix and can_share_prefix(model)
    for batch in itertools.islice(batches, 2):  # warm-up: allocator, kernels
        activations_for_batch(model, hook, batch, 0, opts)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats, flops, kept, n_batches, t0 = HarvestStats(), 0.0, [], 0, time.perf_counter()
    for batch in batches:
        n_batches += 1
        acts, _ = activations_for_batch(model, hook, batch, 0, opts, stats=stats)
        ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(s.input_ids) for s in batch], batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(s.input_ids)) for s in batch], batch_first=True)
        flops += forward_flops(
            name, [len(s.input_ids) for s in batch], shared_prefix_length(ids, mask) if shares else 0
        )
        if sum(len(k) for k in kept) < a.keep:
            kept.append(acts)
        if time.perf_counter() - t0 > a.harvest_seconds:
            break
    sync(device)
    dt = time.perf_counter() - t0
    return {
        "seconds": dt,
        "tokens": stats.tokens_real,
        "vectors": stats.tokens_kept,
        "tok_s": stats.tokens_real / dt,
        "vectors_s": stats.tokens_kept / dt,
        "tflop_s": flops / dt / 1e12,
        "padding_share": stats.padding_fraction,
        "bucket_padding_share_all": bstats.padding_fraction,
        "tokens_per_batch": stats.tokens_real / max(1, n_batches),
        "peak_gib": peak_gib(device),
        "acts": torch.cat(kept)[: a.keep],
    }


def sae_rate(
    x: torch.Tensor, width: int, autocast: torch.dtype | str | None, seconds: float, steps: int
) -> dict[str, Any]:
    """Tokens/s of the Trainer's JumpReLU step (fused Adam on CUDA, kernel auto), or of SAELens's JumpReLU training
    step when ``autocast`` is the string ``"saelens"``, on batches of ``x``: at most ``steps`` timed steps (3 at least)
    after ``min(3, steps)`` warm-up steps, until ``seconds`` have passed."""
    device, batch = x.device, min(SAE_BATCH, x.shape[0])
    torch.manual_seed(0)
    if autocast == "saelens":
        from sae_step_peer import saelens_step

        step = saelens_step("jumprelu", x.shape[1], width, 0, None, str(device))
    else:
        sae = create_sae(SAEConfig(architecture="jumprelu", d_in=x.shape[1], d_sae=width)).to(device)
        opt = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.0, 0.999), fused=device.type == "cuda")
        dead = torch.zeros(width, dtype=torch.bool, device=device)
        step = lambda i, xb: bare_step(sae, opt, xb, 1.0, dead, autocast)  # noqa: E731
    nb = max(1, x.shape[0] // batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(min(3, steps)):
        step(i, x[(i % nb) * batch : (i % nb + 1) * batch])
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < steps and (n < min(3, steps) or time.perf_counter() - t0 < seconds):
        step(n, x[(n % nb) * batch : (n % nb + 1) * batch])
        n += 1
        if n % 5 == 0:
            sync(device)
    sync(device)
    tok_s = n * batch / (time.perf_counter() - t0)
    return {
        "batch": batch,
        "tok_s": tok_s,
        "tflop_s": 12 * x.shape[1] * width * tok_s / 1e12,
        "steps": n,
        "peak_gib": peak_gib(device),
    }


def peak_tflops(device: torch.device, override: float | None) -> tuple[str, float | None]:
    if device.type != "cuda":
        return device.type, override
    gpu = torch.cuda.get_device_name(device)
    return gpu, override or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="llama8b")
    ap.add_argument("--tokens", type=int, default=2_000_000, help="harvest at most this many tokens")
    ap.add_argument("--widths", default="8,16", help="expansion factors of the SAE step")
    ap.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per model forward")
    ap.add_argument("--max-batch-size", type=int, default=1024)
    ap.add_argument("--window-tokens", type=int, default=1 << 20, help="bucketing window, in tokens")
    ap.add_argument("--max-padding", type=float, default=0.05, help="bucket_batches' bound (0: none)")
    ap.add_argument("--no-share-prefix", dest="share_prefix", action="store_false")
    ap.add_argument(
        "--keep",
        type=int,
        default=8 * SAE_BATCH,
        help="vectors kept for the SAE step (its batch: 4096 or all of them when fewer)",
    )
    ap.add_argument("--sae-steps", type=int, default=200, help="timed SAE steps at most per row")
    ap.add_argument("--saes", type=int, default=3, help="SAEs per harvest in the projection")
    ap.add_argument("--max-seconds", type=float, default=420.0, help="the whole run (setup included)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak when the name is not known")
    ap.add_argument("--sequences", default=None, help="FAST sequences saved by --save-sequences")
    ap.add_argument("--save-sequences", default=None, help="write the bundled data's sequences here and stop")
    ap.add_argument("--peers", default=None, help="also time SAELens's JumpReLU step, imported from here")
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    start = time.perf_counter()
    seqs = chat_sequences(a.sequences)
    if a.save_sequences:
        save_sequences(seqs, a.save_sequences)
        print(f"saved {len(seqs)} sequences to {a.save_sequences}")
        return {}
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    gpu, peak = peak_tflops(dev, a.peak_tflops)
    widths = [int(w) for w in a.widths.split(",") if w]
    left = lambda: a.max_seconds - (time.perf_counter() - start)  # noqa: E731
    mm = {"bf16": matmul_tflops(dev, torch.bfloat16, 0.02 * a.max_seconds)}
    mm["tf32" if dev.type == "cuda" else "fp32"] = matmul_tflops(dev, torch.float32, 0.02 * a.max_seconds)
    model = build_model(a.config, a.device)
    cfg = CONFIGS[a.config][1]
    data = repeat_to(seqs, cfg["vocab_size"], a.tokens)
    a.harvest_seconds = 0.35 * left()
    h = harvest(model, a.config, data, a)
    acts = h.pop("acts")
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    x = (acts / input_scale(acts)).to(dev)
    d = x.shape[1]
    modes: dict[str, Any] = {"fp32/tf32": None, "bf16 autocast": torch.bfloat16}
    if a.peers:
        import peer_stubs

        peer_stubs.install(a.peers)
        modes["saelens fp32/tf32"] = "saelens"
    sae: dict[str, dict[str, Any]] = {}
    for i, w in enumerate(widths):
        for j, (mode, ac) in enumerate(modes.items()):
            slot = 0.9 * left() / (len(widths) * len(modes) - (i * len(modes) + j))
            r = sae_rate(x, w * d, ac, slot, a.sae_steps)
            r["matmul_fraction"] = r["tflop_s"] / (mm["bf16"] if ac is torch.bfloat16 else list(mm.values())[1])
            sae[f"{w}x {mode}"] = r
    chatsae_modes = [m for m in modes if not m.startswith("saelens")]
    out: dict[str, Any] = {
        "config": a.config,
        "device": gpu,
        "hook": f"resid_post.{hook_layer(a.config)}",
        "d_model": d,
        "peak_bf16_tflops": peak,
        "matmul_tflops": mm,
        "harvest": {**h, "mfu": h["tflop_s"] / peak if peak else None, "matmul_fraction": h["tflop_s"] / mm["bf16"]},
        "sae": sae,
        "projection": {
            f"{w}x": [
                projection(h["vectors_s"], max(sae[f"{w}x {m}"]["tok_s"] for m in chatsae_modes), n)
                for n in (1, a.saes)
            ]
            for w in widths
        },
        "seconds": time.perf_counter() - start,
    }
    report(out)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


def _f(v: float | None, spec: str = ",.0f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def report(o: dict[str, Any]) -> None:
    h, mm = o["harvest"], o["matmul_tflops"]
    rates = ", ".join(f"{k} {v:.3g}" for k, v in mm.items())
    print(f"device {o['device']}, {o['config']} up to {o['hook']} (d_model {o['d_model']}), torch {torch.__version__}")
    print(f"peak bf16 {_f(o['peak_bf16_tflops'], '.1f')} TFLOP/s (named); measured matmul {rates} TFLOP/s")
    print(
        f"harvest: {_f(h['tok_s'])} tok/s ({_f(h['vectors_s'])} vectors/s), {h['tokens']:,} tokens in "
        f"{h['seconds']:.1f} s; {h['tflop_s']:.3g} TFLOP/s = MFU {_f(h['mfu'], '.1%')}, "
        f"{h['matmul_fraction']:.1%} of measured bf16 matmul; padding {h['padding_share']:.1%}, "
        f"{_f(h['tokens_per_batch'])} tokens/batch; peak {_f(h['peak_gib'], '.2f')} GiB"
    )
    for k, r in o["sae"].items():
        print(
            f"SAE {k} (d_sae {int(k.split('x')[0]) * o['d_model']:,}): {_f(r['tok_s'])} tok/s, {r['steps']} steps; "
            f"{r['tflop_s']:.3g} TFLOP/s = {r['matmul_fraction']:.1%} of measured matmul; "
            f"peak {_f(r['peak_gib'], '.2f')} GiB"
        )
    for w, rows in o["projection"].items():
        for p in rows:
            print(
                f"projection {w}, {p['saes']} SAE(s), {PAPER_TOKENS:,} tokens: harvest {p['harvest_h']:.2f} h + "
                f"training {p['train_h']:.2f} h -> disk cache {p['disk_h']:.2f} h, streamed {p['stream_h']:.2f} h"
            )
    print(f"total {o['seconds']:.1f} s")


if __name__ == "__main__":
    main()
