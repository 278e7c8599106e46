"""chatsae's step cost against width, batch size, L0 and kernel (the tables of docs/performance.md).

    .venv/bin/python benchmarks/sae_step_sweep.py [--steps 3] [--repeats 3] [--only l0|width|batch|topk|crossover]

Uses the inputs of bench_jumprelu_step.py (made on first use). Each row: median (min-max) tokens/s of
``sae_step_chatsae.py`` over ``--repeats`` runs, the kernels of a row alternating.
"""

from __future__ import annotations

import argparse
import statistics

from sae_step_common import chatsae_cmd, prepare, run_once


def row(label: str, cmds: dict[str, list[str]], repeats: int) -> None:
    tok: dict[str, list[float]] = {k: [] for k in cmds}
    l0 = {}
    for _ in range(repeats):
        for k, cmd in cmds.items():
            if not cmd:
                continue
            res = run_once(cmd)
            tok[k].append(float(res["tok_s"]))
            l0[k] = res["l0"]
    cells = [f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})" if v else "-" for v in tok.values()]
    print(f"| {label} | {next(iter(l0.values()))} | " + " | ".join(cells) + " |", flush=True)


def crossover_row(scale: float, cmds: dict[str, list[str]], repeats: int) -> None:
    tok: dict[str, list[float]] = {k: [] for k in cmds}
    res: dict[str, str] = {}
    for _ in range(repeats):
        for k, cmd in cmds.items():
            res = run_once(cmd)
            tok[k].append(float(res["tok_s"]))
    med = {k: statistics.median(v) for k, v in tok.items()}
    cells = [f"{med[k]:.0f} ({min(v):.0f}-{max(v):.0f})" for k, v in tok.items()]
    print(
        f"| {scale} | {res['l0']} | {res['density']} | "
        + " | ".join(cells)
        + f" | {med['sparse'] / med['dense']:.2f} |",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None)
    a = ap.parse_args()
    acts, weights = prepare()
    s, r = a.steps, a.repeats
    kernels = ("auto", "sparse", "dense", "reference")
    if a.only in (None, "l0"):
        print("\nJumpReLU, trained weights, thresholds scaled (batch 4096, d_sae 4608); tokens/s per kernel")
        print("| theta scale | L0 | " + " | ".join(kernels) + " |\n|---|---|" + "---|" * len(kernels))
        for scale in (1.0, 0.3, 0.1, 0.0):
            row(
                f"{scale}",
                {
                    k: []
                    if k == "sparse" and scale == 0
                    else chatsae_cmd(  # forced sparse at L0 ~2000: slow
                        "jumprelu", acts, 4096, s, "--weights", weights, "--theta-scale", scale, "--kernel", k
                    )
                    for k in kernels
                },
                r,
            )
    if a.only in (None, "batch"):
        print("\nJumpReLU, trained weights, by batch size; tokens/s (auto | reference)")
        print("| batch | L0 | auto | reference |\n|---|---|---|---|")
        for batch in (1024, 4096):
            row(
                f"{batch}",
                {
                    k: chatsae_cmd("jumprelu", acts, batch, s, "--weights", weights, "--kernel", k)
                    for k in ("auto", "reference")
                },
                r,
            )
    if a.only in (None, "width"):
        print("\nFresh init by width (batch 4096); tokens/s (auto | reference)")
        print("| arch, d_sae | L0 | auto | reference |\n|---|---|---|---|")
        for arch in ("jumprelu", "topk"):
            for d_sae in (2304, 4608, 9216):
                row(
                    f"{arch}, {d_sae} ({d_sae // 576}x)",
                    {
                        k: chatsae_cmd(arch, acts, 4096, s, "--d-sae", d_sae, "--kernel", k)
                        for k in ("auto", "reference")
                    },
                    r,
                )
    if a.only in (None, "crossover"):
        print(
            "\nJumpReLU sparse vs dense path by L0 (trained weights, thresholds scaled; batch 4096, d_sae 4608); "
            "density = share of [B, d_sae] entries with z > theta - eps (what auto compares with "
            "SPARSE_MAX_DENSITY)"
        )
        print("| theta scale | L0 | density | sparse | dense | sparse / dense (median) |\n|---|---|---|---|---|---|")
        for scale in (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.0):
            crossover_row(
                scale,
                {
                    k: chatsae_cmd(
                        "jumprelu", acts, 4096, s, "--weights", weights, "--theta-scale", scale, "--kernel", k
                    )
                    for k in ("sparse", "dense")
                },
                r,
            )
    if a.only in (None, "topk"):
        print("\nTopK k32 with AuxK: share of latents dead (batch 4096, d_sae 4608); tokens/s (auto | reference)")
        print("| dead share | L0 | auto | reference |\n|---|---|---|---|")
        for frac in (0.0, 0.1, 0.6):
            row(
                f"{frac}",
                {
                    k: chatsae_cmd("topk", acts, 4096, s, "--dead-frac", frac, "--kernel", k)
                    for k in ("auto", "reference")
                },
                r,
            )


if __name__ == "__main__":
    main()
