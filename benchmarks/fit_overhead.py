"""Issue 11 target 3: ``Trainer.fit`` against the bare training step it wraps (ratio of tokens/s, target >= 0.95).

    .venv/bin/python benchmarks/fit_overhead.py [--repeats 5] [--steps 30] [--batch 1024] [--arch jumprelu]

Both sides start from the same JumpReLU weights trained on the same real activations (``runs/bench/``, made on first
use by ``sae_step_common.prepare``) or a fresh TopK SAE, with the same optimiser settings (Adam, constant lr 7e-5,
β1 0, sparsity coefficient 1; the Trainer's fused Adam) and batches: the **bare** loop is
``benchmarks/sae_step_chatsae.py``'s step (loss, backward, parallel-gradient removal, Adam, decoder norm, threshold
clamp); **fit** is ``Trainer.fit`` on a
``TensorSource`` of the activations (input screening, device metrics read once per ``log_every``, firing statistics,
the metrics log, the final save; no checkpoints, no normalisation, b_dec kept). The two run in one process,
alternating round by round; each runs N and 3N steps, and the per-step cost is the difference of the two times over
2N steps (the Trainer's one-off set-up, initialisation sample and final save cancel; the whole-call ratio at 3N
steps, with them, is printed too). The last line gives the median per-step tokens/s of each and the median of the
per-round ratios fit / bare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sae_step_common import bare_step, prepare  # noqa: E402

from chatsae.activations import TensorSource  # noqa: E402
from chatsae.sae import SAE, SAEConfig, create_sae  # noqa: E402
from chatsae.train import TrainConfig, Trainer  # noqa: E402
from chatsae.train.trainer import adam  # noqa: E402

LR, COEF = 7e-5, 1.0


def fresh_sae(arch: str, d_in: int, weights: dict[str, torch.Tensor] | None) -> SAE:
    sae = create_sae(SAEConfig(architecture=arch, d_in=d_in, d_sae=8 * d_in, k=32), seed=0)
    if weights is not None:
        sae.load_saelens_state_dict(weights)
    return sae


def bare(sae: SAE, acts: torch.Tensor, batch: int, steps: int) -> float:
    """tokens/s of the bare step loop over the first ``steps`` batches."""
    opt = adam(sae, lr=LR, betas=(0.0, 0.999))  # the Trainer's Adam (fused where available)
    dead = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    nb = acts.shape[0] // batch
    t = time.perf_counter()
    for i in range(steps):
        out = bare_step(sae, opt, acts[(i % nb) * batch : (i % nb + 1) * batch], COEF, dead)
    out.loss.detach().item()  # one sync at the end, as fit's last log line
    return steps * batch / (time.perf_counter() - t)


def fit(sae: SAE, acts: torch.Tensor, batch: int, steps: int, out_dir: Path) -> float:
    """tokens/s of ``Trainer.fit`` for ``steps`` steps (construction, initialisation and the final save included)."""
    cfg = TrainConfig(
        total_tokens=steps * batch,
        batch_size=batch,
        lr=LR,
        lr_warmup_steps=0,
        lr_decay="constant",
        beta1=0.0,
        sparsity_coef=COEF,
        sparsity_warmup_steps=0,
        normalize_activations=False,
        b_dec_init="zeros",
        init_sample_tokens=batch,
        grad_clip_norm=0.0,
        checkpoint_every=0,
        progress=False,
        device="cpu",
        seed=0,
    )
    t = time.perf_counter()
    trainer = Trainer(sae, cfg, TensorSource(acts, batch, shuffle=False), out_dir)
    trainer.fit()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30, help="N: each side runs N and 3N steps per round")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--arch", default="jumprelu", choices=["jumprelu", "topk"])
    a = ap.parse_args()
    acts_path, weights_path = prepare()
    acts = torch.load(acts_path)
    weights = torch.load(weights_path) if a.arch == "jumprelu" else None
    n, d = a.steps, acts.shape[1]
    whole: dict[str, list[float]] = {"bare": [], "fit": []}
    loop: dict[str, list[float]] = {"bare": [], "fit": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name in ("bare", "fit"):
                secs = []
                for steps in (n, 3 * n):
                    sae = fresh_sae(a.arch, d, weights)
                    tok_s = (
                        bare(sae, acts, a.batch, steps)
                        if name == "bare"
                        else fit(sae, acts, a.batch, steps, Path(tmp) / f"fit{r}_{steps}")
                    )
                    secs.append(steps * a.batch / tok_s)
                whole[name].append(3 * n * a.batch / secs[1])
                loop[name].append(2 * n * a.batch / (secs[1] - secs[0]))  # per-step cost: fixed costs cancel
            print(
                f"  round {r + 1}/{a.repeats}: whole call ({3 * n} steps) bare {whole['bare'][-1]:.0f}, fit "
                f"{whole['fit'][-1]:.0f} tok/s; per step bare {loop['bare'][-1]:.0f}, fit {loop['fit'][-1]:.0f} "
                "tok/s",
                flush=True,
            )
    med = statistics.median
    ratio_whole = med(f / b for f, b in zip(whole["fit"], whole["bare"], strict=True))
    ratios = [f / b for f, b in zip(loop["fit"], loop["bare"], strict=True)]
    print(
        f"{a.arch}, batch {a.batch}, {torch.get_num_threads()} threads; whole call of {3 * n} steps (with the "
        f"Trainer's set-up, initialisation sample and final save): ratio {ratio_whole:.3f}; per-step ratios "
        + ", ".join(f"{x:.3f}" for x in ratios)
    )
    print(
        f"bare step median {med(loop['bare']):.0f} tok/s, Trainer.fit step median {med(loop['fit']):.0f} tok/s, "
        f"ratio {med(ratios):.3f} (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
