"""Shared pieces of the SAE-step benchmarks: inputs made from the embedded model, peer venvs, alternating runs.

Everything goes under ``runs/bench/`` (git-ignored): ``chatsae harvest`` of 300 chat samples (FAST, resid_post.15),
a short JumpReLU ``chatsae train`` on that cache, ``acts.pt`` (16,384 activations of resid_post.15 divided by the input
scale, so that E||x||^2 = 1) and ``jumprelu_trained.pt`` (that SAE in the same normalised units).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench"
RUN = WORK / "jumprelu_trained"
HARVEST = WORK / "harvest"
TRAIN_TOKENS = 120_000
DATA = ROOT.parent / "shared" / "data" / "alpaca_4000.json"
N_ACTS = 16_384
TORCH_PIN = "torch==2.13.0"
PEERS = {"saelens": ("sae-lens", ".venv-bench-saelens"), "sparsify": ("eai-sparsify", ".venv-bench-sparsify")}
HERE = Path(__file__).resolve().parent


def prepare() -> tuple[Path, Path]:
    """``(acts.pt, jumprelu_trained.pt)``, made on first use (a few minutes: harvest + a short training run)."""
    acts_path, weights_path = WORK / "acts.pt", WORK / "jumprelu_trained.pt"
    if acts_path.exists() and weights_path.exists():
        return acts_path, weights_path
    chatsae = str(ROOT / ".venv" / "bin" / "chatsae")
    if not (HARVEST / "activations" / "manifest.json").exists():
        data = os.environ.get("CHATSAE_BENCH_DATA", str(DATA))
        print(f"harvesting the embedded model's activations -> {HARVEST}", flush=True)
        subprocess.run(
            [chatsae, "harvest", "--data", data, "--max-samples", "300", "--out-dir", str(HARVEST), "--overwrite"],
            check=True,
        )
    if not (RUN / "sae").exists():
        print(f"training a JumpReLU SAE on them ({TRAIN_TOKENS} tokens) -> {RUN}", flush=True)
        subprocess.run(
            [
                chatsae,
                "train",
                "--activations",
                str(HARVEST / "activations"),
                "--total-tokens",
                str(TRAIN_TOKENS),
                "--out-dir",
                str(RUN),
                "--overwrite",
            ],
            check=True,
        )
    from chatsae.activations.cache import ActivationCache
    from chatsae.sae import load_sae
    from chatsae.train.init import input_scale

    cache = ActivationCache(HARVEST / "activations")
    g = torch.Generator().manual_seed(0)
    index = torch.randperm(len(cache), generator=g)[:N_ACTS].sort().values
    acts = cache.gather(index).acts.float()
    scale = input_scale(acts)
    torch.save((acts / scale).contiguous(), acts_path)
    sae = load_sae(RUN / "sae")
    sae.fold_input_scale(1.0 / scale)  # the saved SAE takes raw activations: back to normalised units
    torch.save({k: v.float().contiguous() for k, v in sae.saelens_state_dict().items()}, weights_path)
    return acts_path, weights_path


def peer_python(lib: str) -> str:
    """The python of the peer's own venv, created (pinned torch, CPU) when missing."""
    package, venv = PEERS[lib]
    py = ROOT / venv / "bin" / "python"
    if not py.exists():
        print(f"installing {package} into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(ROOT / venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", TORCH_PIN, package], check=True)
    return str(py)


def chatsae_cmd(*args: object) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "python"), str(HERE / "sae_step_chatsae.py"), *map(str, args)]


def peer_cmd(lib: str, *args: object) -> list[str]:
    return [peer_python(lib), str(HERE / "sae_step_peer.py"), lib, *map(str, args)]


def run_once(cmd: list[str]) -> dict[str, str]:
    """Run one timer; its ``RESULT k=v ...`` line as a dict."""
    env = {**os.environ, "SPARSIFY_DISABLE_TRITON": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT")][-1]
    return dict(re.findall(r"(\w+)=(\S+)", line))


def alternate(programs: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """tokens/s of each program, ``repeats`` rounds, the programs alternating within each round."""
    tok: dict[str, list[float]] = {name: [] for name in programs}
    for r in range(repeats):
        for name, cmd in programs.items():
            res = run_once(cmd)
            tok[name].append(float(res["tok_s"]))
            print(f"  round {r + 1}/{repeats} {name}: {res['tok_s']} tok/s (l0 {res.get('l0')})", flush=True)
    return tok


def summary(name: str, values: list[float]) -> str:
    return f"{name} median {statistics.median(values):.0f} (min {min(values):.0f}, max {max(values):.0f}) tok/s"


def ratio(ours: list[float], peer: list[float]) -> float:
    """Median of the per-round ratios (rounds alternate the programs, so each ratio sees the same load)."""
    return statistics.median(o / p for o, p in zip(ours, peer, strict=True))


def bare_step(
    sae: Any,
    opt: torch.optim.Optimizer,
    xb: torch.Tensor,
    coef: float,
    dead: torch.Tensor,
    autocast: torch.dtype | None = None,
) -> Any:
    """chatsae's training step without the Trainer: loss, backward, parallel-gradient removal, Adam, decoder norm,
    threshold clamp (JumpReLU). ``autocast``: the loss under ``torch.autocast`` in that dtype, as the Trainer's
    ``--autocast`` does (the backward outside it). Returns the LossOutput."""
    with torch.autocast(xb.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out = sae.loss(xb, coef, dead)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    sae.remove_parallel_decoder_grad()
    opt.step()
    sae.normalize_decoder()
    if hasattr(sae, "clamp_threshold"):
        sae.clamp_threshold()
    return out
