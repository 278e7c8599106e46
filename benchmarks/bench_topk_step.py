"""Target 2 (issue 11): chatsae's TopK (k 32) training step vs sparsify's and SAELens's.

    .venv/bin/python benchmarks/bench_topk_step.py [--repeats 5] [--steps 5] [--batch 4096]

The same 16,384 real activations for the three libraries (see bench_jumprelu_step.py), each with its own
initialisation, no dead latents (sparsify has no AuxK by default; SAELens's is then 0). The programs alternate; the
last line gives the medians and the median per-round ratios (targets: >= 1.0x sparsify, >= 2x SAELens).
"""

from __future__ import annotations

import argparse

from sae_step_common import alternate, chatsae_cmd, peer_cmd, prepare, ratio, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    a = ap.parse_args()
    acts, _ = prepare()
    tok = alternate(
        {
            "sparsify": peer_cmd("sparsify", "topk", acts, a.batch, a.steps, 4608, a.k),
            "saelens": peer_cmd("saelens", "topk", acts, a.batch, a.steps, 4608, a.k),
            "chatsae": chatsae_cmd("topk", acts, a.batch, a.steps, "--k", a.k),
        },
        a.repeats,
    )
    for name, values in tok.items():
        print("  " + summary(name, values))
    med = {n: sorted(v)[len(v) // 2] for n, v in tok.items()}
    print(
        f"TopK k{a.k} step: sparsify {med['sparsify']:.0f} tok/s, saelens {med['saelens']:.0f} tok/s, chatsae "
        f"{med['chatsae']:.0f} tok/s, ratio vs sparsify {ratio(tok['chatsae'], tok['sparsify']):.2f}, "
        f"vs saelens {ratio(tok['chatsae'], tok['saelens']):.2f}"
    )


if __name__ == "__main__":
    main()
