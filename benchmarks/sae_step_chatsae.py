"""Time chatsae's SAE training step (the Trainer's: loss, backward, parallel-gradient removal, Adam, decoder norm,
threshold clamp) on a saved activation tensor. Prints one ``RESULT ... tok_s=...`` line.

    .venv/bin/python benchmarks/sae_step_chatsae.py ARCH ACTS.pt BATCH STEPS [--d-sae N] [--k 32] [--weights W.pt]
        [--kernel auto|sparse|dense|reference] [--theta-scale 1.0] [--dead-frac 0.0]

``--weights`` loads a JumpReLU state (W_enc, W_dec, b_enc, b_dec, threshold) trained on the same activations.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
from sae_step_common import bare_step

from chatsae.sae import SAEConfig, create_sae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", choices=["jumprelu", "topk"])
    ap.add_argument("acts")
    ap.add_argument("batch", type=int)
    ap.add_argument("steps", type=int)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--kernel", default="auto")
    ap.add_argument("--theta-scale", type=float, default=1.0, help="JumpReLU: multiply the loaded thresholds (L0)")
    ap.add_argument("--dead-frac", type=float, default=0.0, help="TopK: share of latents marked dead (AuxK active)")
    a = ap.parse_args()
    X = torch.load(a.acts)
    torch.manual_seed(0)
    sae = create_sae(SAEConfig(architecture=a.arch, d_in=X.shape[1], d_sae=a.d_sae, k=a.k))
    if a.weights:
        state = torch.load(a.weights)
        state["threshold"] = state["threshold"] * a.theta_scale
        sae.load_saelens_state_dict(state)
    sae.kernel = a.kernel  # type: ignore[attr-defined]
    opt = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.0, 0.999))
    dead = torch.zeros(a.d_sae, dtype=torch.bool)
    dead[: int(a.dead_frac * a.d_sae)] = True
    nb = X.shape[0] // a.batch
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step(i: int) -> torch.Tensor:
        return bare_step(sae, opt, X[(i % nb) * a.batch : (i % nb + 1) * a.batch], 1.0, dead).sparsity.detach()

    for i in range(int(os.environ.get("WARMUP", "1"))):
        step(i)
    t = time.perf_counter()
    for i in range(a.steps):
        l0 = step(i)
    dt = time.perf_counter() - t
    density = -1.0  # JumpReLU: share of [B, d_sae] entries the fused kernel keeps (z > theta - eps), as it measures
    if a.arch == "jumprelu":
        with torch.no_grad():
            xb = X[: a.batch]
            z = (xb - sae.b_dec if sae.cfg.apply_b_dec_to_input else xb) @ sae.W_enc + sae.b_enc
            density = float((z > sae.threshold - sae.cfg.jumprelu_bandwidth).float().mean())
    print(
        f"RESULT lib=chatsae arch={a.arch} kernel={a.kernel} batch={a.batch} d_sae={a.d_sae} steps={a.steps} "
        f"tok_s={a.steps * a.batch / dt:.1f} step_ms={1000 * dt / a.steps:.1f} l0={float(l0):.1f} "
        f"density={density:.4f} "
        f"rss_before_mb={rss0:.0f} rss_peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} "
        f"threads={torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
