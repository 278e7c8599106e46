"""Target 1 (issue 11): chatsae's JumpReLU training step vs SAELens's, trained weights and fresh init.

    .venv/bin/python benchmarks/bench_jumprelu_step.py [--repeats 5] [--steps 5] [--batch 4096]

Both libraries get the same 16,384 real activations (embedded SmolLM2-135M-Instruct, resid_post.15, normalised),
d_in 576, d_sae 4608, fp32, Adam. "trained": the weights and thresholds of a JumpReLU SAE trained by chatsae on those
activations are loaded into both (L0 ~ 10-20); "fresh": each library's own initialisation. The programs alternate;
the last line gives the medians and the median per-round ratio (targets: >= 2.5x trained, >= 1.5x fresh).
"""

from __future__ import annotations

import argparse

from sae_step_common import alternate, chatsae_cmd, peer_cmd, prepare, ratio, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4096)
    a = ap.parse_args()
    acts, weights = prepare()
    last = []
    for case, w in (("trained", [weights]), ("fresh", [])):
        print(f"JumpReLU, {case} weights:", flush=True)
        extra = ["--weights", weights] if w else []
        tok = alternate(
            {
                "saelens": peer_cmd("saelens", "jumprelu", acts, a.batch, a.steps, 4608, 32, *w),
                "chatsae": chatsae_cmd("jumprelu", acts, a.batch, a.steps, *extra),
            },
            a.repeats,
        )
        print("  " + summary("saelens", tok["saelens"]) + "; " + summary("chatsae", tok["chatsae"]))
        last.append(
            f"{case}: saelens {sorted(tok['saelens'])[len(tok['saelens']) // 2]:.0f} tok/s, chatsae "
            f"{sorted(tok['chatsae'])[len(tok['chatsae']) // 2]:.0f} tok/s, ratio "
            f"{ratio(tok['chatsae'], tok['saelens']):.2f}"
        )
    print("JumpReLU step " + "; ".join(last))


if __name__ == "__main__":
    main()
