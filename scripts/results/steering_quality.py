"""The steering claim, measured (chatsae.workflows.steering_quality): reference-answer NLL under teacher forcing and
gsm8k accuracy of greedy answers per alpha, for the top special-token latent(s) against random latents of similar
activation scale, with 95% paired bootstrap intervals over the gsm8k items.

    python scripts/results/steering_quality.py runs/embedded_mid_fast_jumprelu/sae --latents 3146 --n-random 3 \\
        --data ../shared/data/gsm8k_train.jsonl --n-items 50 --out docs/results/steering/quality.json

Look the latent up first with `chatsae special-tokens` (latent ids belong to one trained SAE; see
docs/results/steering/README.md). CPU cost: (1 + 1 + n_random) latents x 6 steered alphas x (one teacher-forced pass +
greedy generation of up to --max-new-tokens) over --n-items items, plus one clean pass; `--no-accuracy` keeps only the
NLL (much faster).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chatsae.data.formats import read_records, split_records
from chatsae.eval.result import json_safe
from chatsae.models import load_model
from chatsae.sae import load_sae
from chatsae.steer.report import encode_prompt
from chatsae.workflows.steering_quality import (
    ALPHAS,
    activation_scale,
    gsm8k_item,
    matched_random_latents,
    quality_summary,
    run_quality,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sae")
    ap.add_argument("--latents", required=True, help="comma-separated latents to test (e.g. the top special one)")
    ap.add_argument("--n-random", type=int, default=3, help="random latents of similar activation scale")
    ap.add_argument("--data", default="../shared/data/gsm8k_train.jsonl")
    ap.add_argument("--n-items", type=int, default=50)
    ap.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS))
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="quality.json")
    a = ap.parse_args()
    sae = load_sae(a.sae).eval()
    model, tok = load_model(sae.cfg.metadata.get("model_name") or "embedded")
    records = list(read_records(a.data, fmt="qa"))
    picked = split_records(records, a.n_items, seed=a.seed).heldout
    items = []
    for r in picked:
        if r.messages is None or len(r.messages) < 2:
            raise SystemExit(f"record {r.index} of {a.data} is not a question/answer pair")
        items.append(gsm8k_item(r.messages[0]["content"], r.messages[1]["content"]))
    latents = [int(k) for k in a.latents.split(",")]
    scale = activation_scale(
        model, sae, [encode_prompt(tok, [{"role": "user", "content": it.question}]) for it in items]
    )
    random = matched_random_latents(scale, latents[0], a.n_random, seed=a.seed, exclude=latents)
    alphas = [float(v) for v in a.alphas.split(",")]
    res = run_quality(
        model,
        tok,
        sae,
        items,
        {"top": latents, "random": random},
        alphas,
        not a.no_accuracy,
        a.max_new_tokens,
        a.batch_size,
    )
    summary = quality_summary(res)
    out = {
        "sae": a.sae,
        "data": a.data,
        "n_items": len(items),
        "seed": a.seed,
        "latents": latents,
        "random_latents": random,
        "scale": {str(k): float(scale[k]) for k in latents + random},
        "summary": summary,
        "per_item": {
            g: {str(k): {f"{al:g}": v for al, v in rows.items()} for k, rows in lat.items()}
            for g, lat in res["per_item"].items()
        },
    }
    Path(a.out).write_text(json.dumps(json_safe(out), indent=2) + "\n")
    for p in summary["pairs"]:
        d = p["difference"]
        print(f"{p['verdict']} (difference {d['value']:.4g} [{d['low']:.4g}, {d['high']:.4g}])")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
