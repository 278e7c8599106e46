"""Calibration of a steer-study judge: does it prefer the clean answer over an obviously worse one, in both A/B
orders? Reads a ``chatsae steer-study`` result (questions and clean answers) and pits each clean answer against
(1) 30 repetitions of "the" and (2) the clean answer to the next prompt; writes P(clean preferred) and the order
agreement per kind. A judge that cannot pass this cannot rank steered answers either.

    python scripts/results/steering_judge_calibration.py docs/results/steering/judged/study.json \\
        docs/results/steering/judged/judge_calibration.json [--judge-model embedded]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from chatsae.models import load_model
from chatsae.workflows import steering_judged as J


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="study.json of chatsae steer-study")
    ap.add_argument("out", help="output JSON")
    ap.add_argument("--judge-model", default="embedded", help="local judge model (default: embedded)")
    args = ap.parse_args()
    study = json.loads(Path(args.study).read_text())
    questions, clean = study["questions"], study["clean_answers"]
    model, tok = load_model(args.judge_model)
    judge = J.logprob_pair_judge(model, tok, batch_size=10)
    worse = {"repeated_the": ["the " * 30] * len(clean), "answer_to_another_prompt": clean[1:] + clean[:1]}
    out: dict[str, object] = {"judge": f"local:{args.judge_model} (logprobs)", "study": args.study}
    for kind, answers in worse.items():
        with torch.no_grad():
            scores = J.judge_pairs(judge, questions, clean, answers, seed=0)
        p = sum(s.score for s in scores) / len(scores)
        agree = sum(bool(s.consistent) for s in scores) / len(scores)
        out[kind] = {"p_clean_preferred": p, "order_agreement": agree, "pairs": [s._asdict() for s in scores]}
        print(f"{kind}: P(clean preferred) {p:.3f}, order agreement {agree:.2f}")
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
