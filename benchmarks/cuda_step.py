"""chatsae's SAE training step on a CUDA device: the JumpReLU kernels (reference autograd, fused dense, fused sparse)
at a realistic and at a fresh-init sparsity, TopK, and the paper's width (d_in 4096, d_sae 32768) for the time
estimates of docs/scaling.md. Not run by ``make test``; needs a GPU.

    python benchmarks/cuda_step.py --activations RUN/activations --sae RUN/sae [--steps 20] [--repeats 5]
                                   [--peers DIR] [--sweep-widths 8192,32768] [--extras] [--skip-main]

``--extras`` adds the rows for what the width sweep left open (TopK with AuxK active, batch sizes 1,024 and 16,384,
bf16 autocast) at d_in 4,096 x d_sae 32,768; ``--skip-main`` leaves out the rows of real activations.

``--activations`` / ``--sae``: a cache and a JumpReLU SAE trained on it (``scripts/gpu_check.sh`` makes both in
``runs/gpu_check/gpu``). The step is the Trainer's (``bare_step``: loss, backward, parallel-gradient removal, Adam,
decoder norm, threshold clamp), float32 weights, TF32 matmuls as ``chatsae train`` sets them on CUDA. Each cell is the
median (min-max) tokens/s over ``--repeats`` rounds of ``--steps`` timed steps (after 3 warm-up steps); within a round
the kernels of a row alternate, so the per-round ratio to ``reference`` compares like with like.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from sae_step_common import bare_step
from sae_step_peer import saelens_step, sparsify_step

from chatsae.activations.cache import ActivationCache
from chatsae.sae import SAEConfig, create_sae, load_sae
from chatsae.train.init import input_scale

N_ACTS = 16_384


Step = Callable[[int, torch.Tensor], object]  # step(i, batch) -> L0 (a tensor or a number)


def chatsae_step(sae: torch.nn.Module, dead_fraction: float = 0.0, autocast: torch.dtype | None = None) -> Step:
    """chatsae's Trainer step (``bare_step``) on ``sae`` with the Adam ``chatsae train`` makes (fused on CUDA);
    ``dead_fraction`` of the latents (drawn with seed 0) marked dead, so that TopK's AuxK term is active; the loss under
    ``autocast`` in that dtype (``chatsae train --autocast bf16``)."""
    p = next(sae.parameters())
    opt = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.0, 0.999), fused=p.is_cuda)
    d_sae = sae.cfg.d_sae  # type: ignore[union-attr]
    dead = (torch.rand(d_sae, generator=torch.Generator().manual_seed(0)) < dead_fraction).to(p.device)
    return lambda i, xb: bare_step(sae, opt, xb, 1.0, dead, autocast).sparsity


def time_steps(step: Step, X: torch.Tensor, batch: int, steps: int) -> tuple[float, float]:
    """(tokens/s, L0 of the last batch) over ``steps`` steps after 3 warm-up steps; no host sync inside the loop."""
    nb = X.shape[0] // batch
    sync = torch.cuda.synchronize if X.is_cuda else (lambda: None)
    for i in range(3):
        step(i, X[(i % nb) * batch : (i % nb + 1) * batch])
    sync()
    t = time.perf_counter()
    for i in range(steps):
        l0 = step(i, X[(i % nb) * batch : (i % nb + 1) * batch])
    sync()
    dt = time.perf_counter() - t
    return batch * steps / dt, float(l0.detach().float().mean() if isinstance(l0, torch.Tensor) else l0)  # type: ignore[arg-type]


def row(label: str, make: dict[str, object], X: torch.Tensor, batch: int, steps: int, repeats: int) -> None:
    """One table row: ``make`` maps a column name to a zero-argument factory of a fresh step (new SAE and optimizer)
    every round."""
    tok: dict[str, list[float]] = {k: [] for k in make}
    l0: dict[str, float] = {}
    for _ in range(repeats):
        for name, factory in make.items():
            try:
                t, l0[name] = time_steps(factory(), X, batch, steps)  # type: ignore[operator]
            except Exception as e:  # a kernel that does not run on this device: say so, keep going
                print(f"  {label} {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                t = float("nan")
            tok[name].append(t)
            if X.is_cuda:
                torch.cuda.empty_cache()
    ref = tok.get("reference")
    cells = []
    for name, v in tok.items():
        cell = f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})"
        if ref is not None and name != "reference":
            cell += f" x{statistics.median(a / b for a, b in zip(v, ref, strict=True)):.2f}"
        cells.append(f"{name} {cell} [L0 {l0.get(name, float('nan')):.0f}]")
    print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def _on(weights: dict[str, torch.Tensor] | None, dev: torch.device) -> dict[str, torch.Tensor] | None:
    return None if weights is None else {k: v.to(dev) for k, v in weights.items()}


def load_peers(extra_path: str) -> tuple[str, ...]:
    """The peers that import here (``saelens``, ``sparsify``); says which dependencies are stand-ins."""
    import peer_stubs

    peer_stubs.install(extra_path)
    found = []
    for name, module in (("saelens", "sae_lens.saes.jumprelu_sae"), ("sparsify", "sparsify")):
        try:
            __import__(module)
            found.append(name)
        except Exception as e:
            print(f"peer {name} not timed: {type(e).__name__}: {str(e)[:200]}")
    versions = {m: getattr(sys.modules.get(m), "__version__", "?") for m in ("sae_lens", "sparsify")}
    print(f"peers {found} {versions}; stand-ins for {peer_stubs.STUBBED or 'nothing'}")
    return tuple(found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activations", required=True)
    ap.add_argument("--sae", required=True, help="a JumpReLU SAE trained on --activations")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-paper-width", action="store_true", help="skip the d_in 4096, d_sae 32768 rows")
    ap.add_argument(
        "--sweep-widths",
        default="",
        help="e.g. 8192,32768,131072: d_in 4096 rows at these widths, "
        "JumpReLU with thresholds set for L0 ~ 64 (as trained) and TopK k 64, every kernel",
    )
    ap.add_argument(
        "--peers",
        metavar="DIR",
        default="",
        help="also time SAELens and sparsify (columns 'saelens', 'sparsify'), imported from the installed "
        "packages or from DIR (their wheels installed there with --no-deps; dependencies their SAE "
        "step does not use are answered by stand-ins, see peer_stubs.py)",
    )
    ap.add_argument(
        "--skip-main",
        action="store_true",
        help="skip the rows of real activations (run only the paper-width, sweep and extra rows asked for)",
    )
    ap.add_argument(
        "--extras",
        action="store_true",
        help="the open questions of docs/performance.md: TopK with "
        "AuxK active, other batch sizes, bf16 autocast; d_in 4096, d_sae --extras-width",
    )
    ap.add_argument("--extras-width", type=int, default=32768)
    ap.add_argument("--extras-batches", default="1024,16384", help="batch sizes of the extra batch rows")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    print(f"device {name}, torch {torch.__version__}, TF32 on, batch {a.batch}")

    cache = ActivationCache(a.activations)
    index = torch.randperm(len(cache), generator=torch.Generator().manual_seed(0))[:N_ACTS].sort().values
    acts = cache.gather(index).acts.float()
    X = (acts / input_scale(acts)).contiguous().to(dev)
    trained = load_sae(a.sae)
    trained.fold_input_scale(1.0 / input_scale(acts))
    state = {k: v.float().contiguous() for k, v in trained.saelens_state_dict().items()}
    d_in, d_sae = X.shape[1], trained.cfg.d_sae

    def jumprelu(
        kernel: str,
        weights: dict[str, torch.Tensor] | None,
        d: int = d_in,
        w: int = d_sae,
        autocast: torch.dtype | None = None,
    ):
        def make() -> Step:
            torch.manual_seed(0)
            if kernel == "saelens":
                return saelens_step("jumprelu", d, w, 0, _on(weights, dev), str(dev))
            sae = create_sae(SAEConfig(architecture="jumprelu", d_in=d, d_sae=w)).to(dev)
            if weights is not None:
                sae.load_saelens_state_dict(_on(weights, dev))
            sae.kernel = kernel  # type: ignore[attr-defined]
            return chatsae_step(sae, autocast=autocast)

        return make

    def topk(
        kernel: str, k: int, d: int = d_in, w: int = d_sae, dead: float = 0.0, autocast: torch.dtype | None = None
    ):
        def make() -> Step:
            torch.manual_seed(0)
            if kernel == "saelens":
                return saelens_step("topk", d, w, k, None, str(dev))
            if kernel == "sparsify":
                return sparsify_step(d, w, k, str(dev))
            sae = create_sae(SAEConfig(architecture="topk", d_in=d, d_sae=w, k=k)).to(dev)
            sae.kernel = kernel  # type: ignore[attr-defined]
            return chatsae_step(sae, dead, autocast)

        return make

    def l0_64_state(w: int, Xw: torch.Tensor) -> dict[str, torch.Tensor]:
        """A fresh d_in 4096 JumpReLU SAE (the init ``jumprelu`` makes) with each threshold at the (1 - 64 / w)
        quantile of its pre-activation on ``Xw``: L0 ~ 64, as trained SAEs have."""
        with torch.no_grad():
            torch.manual_seed(0)
            probe = create_sae(SAEConfig(architecture="jumprelu", d_in=4096, d_sae=w)).to(dev)
            z = probe.encoder_input(Xw[:b]) @ probe.W_enc + probe.b_enc
            theta = z.kthvalue(int(b * (1 - 64 / w)), dim=0).values.clamp_min(1e-3)
            state = {k: v.detach().clone() for k, v in probe.saelens_state_dict().items()}
            state["threshold"] = theta
        return state

    peers = load_peers(a.peers) if a.peers else ()
    jr_peers = tuple(p for p in peers if p == "saelens")
    kernels = ("reference", "dense", "sparse", "auto", *jr_peers)
    tk = ("reference", "sparse", "auto", *peers)
    s, r, b = a.steps, a.repeats, a.batch
    if not a.skip_main:
        print(f"## d_in {d_in}, d_sae {d_sae}: real activations of {a.activations}")
        row("JumpReLU, trained weights", {k: jumprelu(k, state) for k in kernels}, X, b, s, r)
        row("JumpReLU, fresh init", {k: jumprelu(k, None) for k in kernels}, X, b, s, r)
        row("TopK k 32, fresh init", {k: topk(k, 32) for k in tk}, X, b, s, r)
    if not a.no_paper_width:
        g = torch.Generator(device=dev).manual_seed(0)
        Xp = torch.randn(4 * b, 4096, device=dev, generator=g) / 4096**0.5  # E||x||^2 = 1
        print("## paper width: d_in 4096, d_sae 32768, Gaussian inputs (cost only: sparsity is not realistic)")
        jr = ("reference", "dense", "auto", *jr_peers)
        row("JumpReLU, fresh init", {k: jumprelu(k, None, 4096, 32768) for k in jr}, Xp, b, s, r)
        row("TopK k 64, fresh init", {k: topk(k, 64, 4096, 32768) for k in tk}, Xp, b, s, r)
    for w in [int(v) for v in a.sweep_widths.split(",") if v]:
        g = torch.Generator(device=dev).manual_seed(1)
        Xw = torch.randn(4 * b, 4096, device=dev, generator=g) / 4096**0.5
        print(f"## sweep: d_in 4096, d_sae {w}, Gaussian inputs")
        state64 = l0_64_state(w, Xw)
        row("JumpReLU, L0 ~ 64", {k: jumprelu(k, state64, 4096, w) for k in kernels}, Xw, b, s, r)
        row("TopK k 64", {k: topk(k, 64, 4096, w) for k in tk}, Xw, b, s, r)
        del Xw, state64
    if a.extras:
        extras(a, dev, jumprelu, topk, l0_64_state)
    if dev.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")


def extras(
    a: argparse.Namespace,
    dev: torch.device,
    jumprelu: Callable[..., object],
    topk: Callable[..., object],
    l0_64_state: Callable[[int, torch.Tensor], dict[str, torch.Tensor]],
) -> None:
    """Rows for what the sweep left open, at d_in 4096 x d_sae ``--extras-width`` on Gaussian inputs: TopK k 64 with
    10% of the latents dead (AuxK, k_aux 2048, active; ``auto`` keeps the reference code on CUDA there), JumpReLU at
    L0 ~ 64 with other batch sizes, and both under bf16 autocast (which the fused kernels leave to the reference code)
    against float32."""
    w, s, r, b = a.extras_width, a.steps, a.repeats, a.batch
    batches = [int(v) for v in a.extras_batches.split(",") if v]
    g = torch.Generator(device=dev).manual_seed(2)
    X = torch.randn(4 * max([b, *batches]), 4096, device=dev, generator=g) / 4096**0.5
    state64 = l0_64_state(w, X)
    bf16 = torch.bfloat16
    print(f"## extras: d_in 4096, d_sae {w}, Gaussian inputs")
    row(
        "TopK k 64, AuxK on (10% dead)",
        {k: topk(k, 64, 4096, w, 0.1) for k in ("reference", "sparse", "auto")},
        X,
        b,
        s,
        r,
    )
    for bb in batches:
        row(
            f"JumpReLU, L0 ~ 64, batch {bb}",
            {k: jumprelu(k, state64, 4096, w) for k in ("reference", "sparse", "auto")},
            X,
            bb,
            s,
            r,
        )
        row(f"TopK k 64, batch {bb}", {k: topk(k, 64, 4096, w) for k in ("reference", "sparse", "auto")}, X, bb, s, r)
    row(
        "JumpReLU, L0 ~ 64, bf16 autocast",
        {
            "reference": jumprelu("reference", state64, 4096, w),
            "auto": jumprelu("auto", state64, 4096, w),
            "reference_bf16": jumprelu("reference", state64, 4096, w, bf16),
        },
        X,
        b,
        s,
        r,
    )
    row(
        "TopK k 64, bf16 autocast",
        {
            "reference": topk("reference", 64, 4096, w),
            "auto": topk("auto", 64, 4096, w),
            "reference_bf16": topk("reference", 64, 4096, w, 0.0, bf16),
        },
        X,
        b,
        s,
        r,
    )


if __name__ == "__main__":
    main()
