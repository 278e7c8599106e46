"""Give every record of an instruction file a system prompt drawn from a varied pool, for a comparison that does not
rest on one fixed system prompt repeated in every sample.

Chat templates such as SmolLM2's insert one default system prompt when a conversation has none, so every training
sample of a FAST SAE then starts with the same tokens. This script writes two alpaca-style files with a top-level
``system`` field (read by chatsae's alpaca format): the first ``--split`` records with prompts of pool A (training,
and the held-out records of a comparison), the rest with prompts of pool B, which no SAE trained on sees (an extra
evaluation set). The prompt of a record is drawn with a fixed seed.

    python scripts/results/vary_system_prompts.py DATA.json runs/varied --split 3600
    # -> runs/varied/train.json (pool A) and runs/varied/eval_unseen_prompts.json (pool B)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from chatsae.core.utils import atomic_file
from chatsae.data.formats import read_records

POOL_A = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in as few words as possible.",
    "You are a friendly tutor who explains every step.",
    "You are an expert editor. Fix grammar and style without changing the meaning.",
    "Answer as a careful scientist would, and say when you are unsure.",
    "You are a customer support agent for a software company. Be polite and precise.",
    "Respond in plain English suitable for a ten-year-old.",
    "You are a senior software engineer. Prefer short, correct answers.",
    "You are a creative writing assistant with a playful tone.",
    "Think about the question first, then give a short final answer.",
    "You are a math teacher. Show the working, then the result.",
    "You are a travel guide who loves history.",
    "Keep your answers under three sentences.",
    "You are an assistant for a law firm. Be formal and cautious.",
    "You are a cheerful chatbot that likes to use examples.",
    "You are a research librarian. Cite the kind of source an answer would come from.",
    "Answer the user's request directly; do not add pleasantries.",
    "You are a cooking assistant. Give practical, home-kitchen advice.",
    "You are a data analyst. Be quantitative where you can.",
    "You are a poet who answers in prose unless asked for verse.",
    "You are a patient assistant helping someone learn English as a second language.",
    "Reply as a knowledgeable but humble encyclopedia.",
    "You are an AI model deployed in a classroom. Stay on topic and be encouraging.",
    "You are a productivity coach who gives actionable steps.",
)
POOL_B = (
    "You are a museum guide speaking to visitors.",
    "You are a strict proofreader. List problems before fixing them.",
    "You are an assistant on a phone; keep answers brief and clear.",
    "You are a gardening expert with decades of experience.",
    "Answer like a textbook, with a definition first.",
    "You are a game master narrating a story, but you answer questions plainly.",
    "You are a financial literacy educator. Avoid jargon.",
    "You are a helpful robot that explains its reasoning briefly.",
    "You are an assistant for a newspaper's fact-checking desk.",
    "Answer in a warm, conversational style.",
    "You are a philosophy student eager to discuss ideas.",
    "You are an assistant that always double-checks its answers before replying.",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="instruction records (any format chatsae reads)")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--split", type=int, default=3600, help="records with pool A prompts; the rest get pool B")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    records = list(read_records(args.data))
    if not 0 < args.split < len(records):
        ap.error(f"--split {args.split}: give 1 .. {len(records) - 1} ({args.data} has {len(records)} records)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, part, pool in (
        ("train.json", records[: args.split], POOL_A),
        ("eval_unseen_prompts.json", records[args.split :], POOL_B),
    ):
        rows = []
        for rec in part:
            turns = [m for m in rec.messages or [] if m["role"] != "system"]
            if len(turns) != 2 or [m["role"] for m in turns] != ["user", "assistant"]:
                continue  # single-turn instruction records only
            rows.append(
                {
                    "system": rng.choice(pool),
                    "instruction": turns[0]["content"],
                    "input": "",
                    "output": turns[1]["content"],
                }
            )
        with atomic_file(args.out_dir / name, "w") as fh:
            json.dump(rows, fh, indent=0)
        print(f"{args.out_dir / name}: {len(rows)} records, {len(pool)} system prompts")


if __name__ == "__main__":
    main()
