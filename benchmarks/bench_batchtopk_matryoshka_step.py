"""chatsae's BatchTopK and Matryoshka training steps vs SAELens's own BatchTopKTrainingSAE /
MatryoshkaBatchTopKTrainingSAE (target: >= 2x SAELens on the CPU).

    .venv/bin/python benchmarks/bench_batchtopk_matryoshka_step.py [--shapes 576x4608,4096x32768] [--batch 4096]
        [--k 32] [--steps 3] [--repeats 3] [--archs batchtopk,matryoshka] [--acts ACTS.pt] [--saelens-python PY]

A step is forward, loss, backward and Adam (chatsae: the Trainer's step, ``sae_step_common.bare_step``; SAELens:
``training_forward_pass`` with its defaults: decoder-norm rescaling, AuxK coefficient 1). Matryoshka levels are
d_sae/16, /8, /4, /2, d_sae for both. Inputs: Gaussian vectors scaled to E||x||^2 = 1, drawn from one seed (the
same in both programs), or the rows of ``--acts`` (a saved float32 ``[N, d_in]`` tensor, e.g. ``runs/bench/acts.pt``
of ``sae_step_common.prepare()``) for its d_in. No latent is dead (AuxK off in both). The two programs alternate in
each round, each a fresh process; per shape and architecture the last line gives both medians and the median of the
per-round ratios. SAELens runs in its own venv (``.venv-saelens`` of ``make compat`` when present, else
``sae_step_common.peer_python``). Smoke run: ``--shapes 64x512 --batch 256 --steps 1 --repeats 1``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def batches(d_in: int, batch: int, acts: str | None) -> torch.Tensor:
    """``[2 * batch, d_in]`` inputs: the rows of ``acts`` or seeded Gaussians with E||x||^2 = 1."""
    if acts:
        X = torch.load(acts)
        if X.shape[1] != d_in:
            raise SystemExit(f"--acts {acts}: width {X.shape[1]}, but the shape asks for d_in {d_in}")
        return X[: 2 * batch].float().contiguous()
    g = torch.Generator().manual_seed(0)
    return torch.randn(2 * batch, d_in, generator=g) / d_in**0.5


def widths(d_sae: int) -> list[int]:
    return sorted({d_sae // d for d in (16, 8, 4, 2, 1)} - {0})


def chatsae_step(arch: str, d_in: int, d_sae: int, k: int):
    sys.path.insert(0, str(HERE))
    from sae_step_common import bare_step

    from chatsae.sae import SAEConfig, create_sae

    sae = create_sae(SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae, k=k))
    opt = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.0, 0.999))
    dead = torch.zeros(d_sae, dtype=torch.bool)
    return lambda i, xb: bare_step(sae, opt, xb, 0.0, dead).sparsity.detach()


def saelens_step(arch: str, d_in: int, d_sae: int, k: int):
    import sae_lens
    from sae_lens.saes.sae import TrainStepInput

    if arch == "batchtopk":
        sae = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    else:
        cfg = sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, k=k, matryoshka_widths=widths(d_sae)
        )
        sae = sae_lens.MatryoshkaBatchTopKTrainingSAE(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.0, 0.999))
    dead = torch.zeros(d_sae, dtype=torch.bool)

    def step(i: int, xb: torch.Tensor) -> torch.Tensor:
        out = sae.training_forward_pass(
            TrainStepInput(sae_in=xb, coefficients={}, dead_neuron_mask=dead, n_training_steps=i, is_logging_step=False)
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        return (out.feature_acts > 0).float().sum(-1).mean().detach()

    return step


def worker(a: argparse.Namespace) -> None:
    """Time ``a.steps`` steps (after one warm-up) and print one ``RESULT k=v ...`` line."""
    d_in, d_sae = (int(v) for v in a.shape.split("x"))
    X = batches(d_in, a.batch, a.acts)
    torch.manual_seed(0)
    step = (chatsae_step if a.worker == "chatsae" else saelens_step)(a.arch, d_in, d_sae, a.k)
    for i in range(int(os.environ.get("WARMUP", "1"))):
        step(i, X[(i % 2) * a.batch : (i % 2 + 1) * a.batch])
    t = time.perf_counter()
    for i in range(a.steps):
        l0 = step(i, X[(i % 2) * a.batch : (i % 2 + 1) * a.batch])
    dt = time.perf_counter() - t
    print(
        f"RESULT lib={a.worker} arch={a.arch} shape={a.shape} batch={a.batch} steps={a.steps} "
        f"tok_s={a.steps * a.batch / dt:.1f} step_ms={1000 * dt / a.steps:.1f} l0={float(l0):.1f} "
        f"rss_peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} threads={torch.get_num_threads()}"
    )


def saelens_python(given: str | None) -> str:
    if given:
        return given
    compat = ROOT / ".venv-saelens" / "bin" / "python"
    if compat.exists():
        return str(compat)
    sys.path.insert(0, str(HERE))
    from sae_step_common import peer_python

    return peer_python("saelens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="576x4608,4096x32768", help="comma-separated D_INxD_SAE")
    ap.add_argument("--archs", default="batchtopk,matryoshka")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--acts", default=None, help="saved [N, d_in] activations for the shape of that d_in")
    ap.add_argument("--saelens-python", default=None)
    ap.add_argument("--worker", choices=["chatsae", "saelens"], help=argparse.SUPPRESS)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    sys.path.insert(0, str(HERE))
    from sae_step_common import alternate, ratio, summary

    peer = saelens_python(a.saelens_python)
    for shape in a.shapes.split(","):
        d_in = int(shape.split("x")[0])
        acts = a.acts if a.acts and torch.load(a.acts, mmap=True).shape[1] == d_in else None
        for arch in a.archs.split(","):
            common = ["--arch", arch, "--shape", shape, "--batch", str(a.batch), "--k", str(a.k)]
            common += ["--steps", str(a.steps)] + (["--acts", acts] if acts else [])
            print(f"{arch} {shape} batch {a.batch} k {a.k} ({'real' if acts else 'Gaussian'} inputs)", flush=True)
            tok = alternate(
                {
                    "saelens": [peer, __file__, "--worker", "saelens", *common],
                    "chatsae": [sys.executable, __file__, "--worker", "chatsae", *common],
                },
                a.repeats,
            )
            for name, values in tok.items():
                print("  " + summary(name, values))
            med = {n: sorted(v)[len(v) // 2] for n, v in tok.items()}
            print(
                f"{arch} {shape} step: saelens {med['saelens']:.0f} tok/s, chatsae {med['chatsae']:.0f} tok/s, "
                f"ratio {ratio(tok['chatsae'], tok['saelens']):.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
