"""Check that SAELens loads a chatsae SAE directory and computes the same thing.

Run it with the SAELens environment that ``make compat`` builds::

    .venv-saelens/bin/python scripts/check_saelens.py runs/default/sae [more SAE dirs ...]

For each directory: ``sae_lens.SAE.load_from_disk`` and ``chatsae.load_sae``, then encode/decode random inputs at the
scale of the raw activations (``metadata.input_scale_folded``, else 1) and compare. Exit status 1 if any differs by
more than the tolerance (relative to the input scale).
"""

from __future__ import annotations

import argparse
import sys

import torch


def check(path: str, n: int, tol: float) -> bool:
    import sae_lens

    from chatsae.sae import load_sae

    ours = load_sae(path)
    theirs = sae_lens.SAE.load_from_disk(path)
    scale = float(ours.cfg.metadata.get("input_scale_folded", 1.0))
    x = torch.randn(n, ours.cfg.d_in, generator=torch.Generator().manual_seed(0)) * scale / ours.cfg.d_in**0.5
    with torch.no_grad():
        f_ours, f_theirs = ours.encode(x), theirs.encode(x)
        diffs = {
            "encode": (f_ours - f_theirs).abs().max().item(),
            "decode": (ours.decode(f_ours) - theirs.decode(f_ours)).abs().max().item(),
            "forward": (ours(x) - theirs(x)).abs().max().item(),
        }
    ok = all(d <= tol * max(scale, 1.0) for d in diffs.values())
    l0 = (f_ours > 0).sum(-1).float().mean().item()
    print(
        f"{'OK  ' if ok else 'FAIL'} {path}: {type(theirs).__name__} (sae-lens {sae_lens.__version__}), "
        f"input scale {scale:.4g}, L0 {l0:.1f}, max |diff| " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="SAE directories written by chatsae")
    parser.add_argument("--n", type=int, default=256, help="random inputs per SAE")
    parser.add_argument("--tol", type=float, default=1e-5, help="tolerance, relative to the input scale")
    args = parser.parse_args()
    try:
        import sae_lens  # noqa: F401
    except ImportError:
        print("sae_lens is not importable here: run `make compat` and use .venv-saelens/bin/python", file=sys.stderr)
        return 2
    results = [check(p, args.n, args.tol) for p in args.paths]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
