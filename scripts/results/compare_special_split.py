"""MSE_st of the compare SAEs split into the fixed chat-template prefix and the later template tokens.

In alpaca_4000 rendered by SmolLM2's template, every sample starts with the same default system prompt, so the
template tokens before the first user token (`system`, `\\n`, `<|im_end|>`, `\\n`, `<|im_start|>`, `user`, `\\n`) sit
at fixed positions after an identical prefix: their activations are the same in every sample. The later template
tokens (`<|im_end|>` after the user turn, `<|im_start|>assistant\\n`, the final `<|im_end|>`) depend on the context.
This script reports FAST Eq. 7 MSE (per-sequence mean over the positions, summed over dimensions / d_in, averaged over
sequences) on both groups for every SAE of a `chatsae compare` directory, on its held-out records (FAST-style).

    python scripts/results/compare_special_split.py runs/compare > docs/results/compare/special_split.md
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from chatsae.data.chat_template import TEMPLATE, USER
from chatsae.data.formats import read_records
from chatsae.eval import EvalConfig, build_sequences
from chatsae.models import capture, load_model
from chatsae.sae import load_sae


def main(study: Path, n: int = 50) -> None:
    model, tok = load_model("embedded")
    records = list(read_records(study / "heldout.jsonl"))[:n]
    seqs = build_sequences(records, tok, EvalConfig(method="fast", max_length=8192))
    runs = sorted(p.parent.parent for p in study.glob("*/sae/cfg.json"))
    saes = {r.name: load_sae(r / "sae").eval() for r in runs}
    hook = next(iter(saes.values())).cfg.metadata["hook_name"]
    sums: dict[str, dict[str, list[float]]] = {name: {"prefix": [], "later": []} for name in saes}
    counts = {"prefix": 0, "later": 0}
    with torch.inference_mode():
        for s in seqs:
            x = capture(model, hook, torch.tensor(s.input_ids)[None])[0]
            cls = torch.tensor(s.token_class)
            first_user = int((cls == USER).nonzero()[0]) if (cls == USER).any() else len(cls)
            pos = torch.arange(len(cls))
            groups = {
                "prefix": (cls == TEMPLATE) & (pos > 0) & (pos < first_user),
                "later": (cls == TEMPLATE) & (pos > first_user),
            }
            for g, m in groups.items():
                counts[g] += int(m.sum())
            for name, sae in saes.items():
                err = (x - sae(x)).pow(2).sum(-1) / x.shape[-1]
                for g, m in groups.items():
                    if m.any():
                        sums[name][g].append(float(err[m].mean()))
    print(f"# MSE_st split: fixed template prefix vs later template tokens ({len(seqs)} held-out records, `{hook}`)\n")
    print(
        f"Template tokens (position 0 left out): {counts['prefix']} in the fixed prefix, {counts['later']} later. "
        "log2 of FAST Eq. 7 MSE; lower is better.\n"
    )
    print("| SAE | log2 MSE, fixed prefix (system block) | log2 MSE, later template tokens |")
    print("|---|---:|---:|")
    out = {}
    for name in saes:
        row = {g: math.log2(sum(v) / len(v)) for g, v in sums[name].items() if v}
        out[name] = row
        print(f"| {name} | {row.get('prefix', float('nan')):.3f} | {row.get('later', float('nan')):.3f} |")
    print("\n```json\n" + json.dumps(out, indent=1) + "\n```")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
