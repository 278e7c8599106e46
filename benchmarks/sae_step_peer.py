"""Time a peer library's SAE training step on a saved activation tensor (runs in the peer's own venv; adapted from
../shared/bench/peer_saelens_step.py and peer_sparsify_step.py). Prints one ``RESULT ... tok_s=...`` line.

    python sae_step_peer.py saelens ARCH ACTS.pt BATCH STEPS D_SAE K [WEIGHTS.pt]     # ARCH: jumprelu | topk
    SPARSIFY_DISABLE_TRITON=1 python sae_step_peer.py sparsify topk ACTS.pt BATCH STEPS D_SAE K

WEIGHTS.pt (SAELens JumpReLU only): W_enc, W_dec, b_enc, b_dec, threshold, as chatsae saves them.
"""

from __future__ import annotations

import os
import resource
import sys
import time

import torch


def saelens_step(arch: str, d_in: int, d_sae: int, k: int, weights: str | dict | None, device: str = "cpu"):
    """A ``step(i, xb) -> L0`` closure over a fresh SAELens training SAE and its Adam (``weights``: a path or a
    state dict, JumpReLU only)."""
    from sae_lens.saes.sae import TrainStepInput

    if arch == "jumprelu":
        from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE as Cls
        from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAEConfig as Cfg

        # b_dec not subtracted from the input, as chatsae's JumpReLU does, so trained weights mean the same
        cfg = Cfg(d_in=d_in, d_sae=d_sae, l0_coefficient=1.0, apply_b_dec_to_input=False)
        coef = {"l0": 1.0}
    else:
        from sae_lens.saes.topk_sae import TopKTrainingSAE as Cls
        from sae_lens.saes.topk_sae import TopKTrainingSAEConfig as Cfg

        cfg, coef = Cfg(d_in=d_in, d_sae=d_sae, k=k), {}
    sae = Cls(cfg).to(device)
    if weights is not None:
        state = torch.load(weights) if isinstance(weights, str) else weights
        with torch.no_grad():
            for name, t in state.items():
                getattr(sae, name).copy_(t)
    opt = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.0, 0.999))
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)

    def step(i: int, xb: torch.Tensor) -> torch.Tensor:
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=xb, coefficients=coef, dead_neuron_mask=dead, n_training_steps=i, is_logging_step=False
            )
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        return (out.feature_acts > 0).float().sum(-1).mean().detach()  # no host sync here (CUDA)

    return step


def sparsify_step(d_in: int, d_sae: int, k: int, device: str = "cpu"):
    """A ``step(i, xb) -> L0`` closure over a fresh sparsify SparseCoder and its Adam."""
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4)

    def step(i: int, xb: torch.Tensor) -> float:
        out = sae(xb)
        opt.zero_grad()
        out.fvu.backward()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()
        return float(k)

    return step


def main() -> None:
    lib, arch, acts, batch, steps, d_sae, k = sys.argv[1:8]
    weights = sys.argv[8] if len(sys.argv) > 8 else None
    batch, steps, d_sae, k = int(batch), int(steps), int(d_sae), int(k)
    X = torch.load(acts)
    torch.manual_seed(0)
    d_in = X.shape[1]
    step = saelens_step(arch, d_in, d_sae, k, weights) if lib == "saelens" else sparsify_step(d_in, d_sae, k)
    nb = X.shape[0] // batch
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for i in range(int(os.environ.get("WARMUP", "1"))):
        step(i, X[(i % nb) * batch : (i % nb + 1) * batch])
    t = time.perf_counter()
    for i in range(steps):
        l0 = step(i, X[(i % nb) * batch : (i % nb + 1) * batch])
    dt = time.perf_counter() - t
    print(
        f"RESULT lib={lib} arch={arch} batch={batch} d_sae={d_sae} steps={steps} tok_s={steps * batch / dt:.1f} "
        f"step_ms={1000 * dt / steps:.1f} l0={float(l0):.1f} rss_before_mb={rss0:.0f} "
        f"rss_peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} threads={torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
