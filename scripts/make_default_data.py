"""Make chatsae's default instruction dataset: prompts written for the project + the embedded model's greedy answers.

The prompts are the cross product of hand-written task templates and topics below (every prompt was written for this
project, no external data). Each answer is SmolLM2-135M-Instruct's (the embedded model) greedy continuation of the
chat-templated prompt (``repetition_penalty=1.2`` to curb loops, ``max_new_tokens=128``), so the data is in-distribution
for the model whose activations the default SAE is trained on. Output: ``chatsae/resources/default_chat.jsonl`` with
one ``{"id", "messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`` per line.

Run: ``.venv/bin/python scripts/make_default_data.py`` (about 10 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

TOPICS = [
    "photosynthesis",
    "the water cycle",
    "volcanoes",
    "the moon",
    "honey bees",
    "recycling",
    "the human heart",
    "rainbows",
    "electric cars",
    "the Roman Empire",
    "chess",
    "coffee",
    "sleep",
    "the internet",
    "earthquakes",
    "vaccines",
    "black holes",
    "bread baking",
    "ocean tides",
    "renewable energy",
    "the printing press",
    "friendship",
    "budgeting money",
    "learning a new language",
    "climate change",
]
TASKS = [
    "Explain {t} to a ten-year-old.",
    "Give me three interesting facts about {t}.",
    "Write a short poem about {t}.",
    "What are the main advantages and disadvantages of {t}?",
    "Summarize what {t} is in two sentences.",
    "Write a haiku about {t}.",
    "What is a common misconception about {t}?",
    "Describe {t} in one paragraph.",
    "How would you explain {t} to someone who has never heard of it?",
    "Write a short story that involves {t}.",
    "List five words related to {t}.",
    "Why is {t} important?",
    "Create a quiz question about {t} and give the answer.",
    "What is the history of {t}?",
    "Write a tweet about {t}.",
    "Compare {t} with something from everyday life.",
    "What would happen if {t} did not exist?",
    "Give me a fun activity for kids about {t}.",
    "What questions should I ask an expert on {t}?",
    "Write a product description inspired by {t}.",
    "Explain {t} using a simple analogy.",
    "What are the key terms someone should know about {t}?",
    "Write a motivational quote related to {t}.",
    "Describe how {t} affects people's daily lives.",
    "Write a dialogue between two friends talking about {t}.",
    "What are some careers connected to {t}?",
    "Give step-by-step instructions for learning about {t}.",
    "Write a limerick about {t}.",
    "What is the most surprising thing about {t}?",
    "Translate the idea of {t} into a simple sentence for a beginner English learner.",
    "Write a short news headline about {t}.",
    "How has {t} changed over the last hundred years?",
    "What are two opinions people have about {t}?",
    "Write an email to a friend recommending they learn about {t}.",
    "Is {t} good or bad? Give a balanced answer.",
    "Explain {t} in exactly three bullet points.",
    "What is one experiment or observation that shows {t}?",
    "Write a riddle whose answer is {t}.",
    "Give me a study plan for one week about {t}.",
    "What would a scientist say about {t}?",
]


def prompts() -> list[str]:
    return [task.format(t=topic) for task, topic in itertools.product(TASKS, TOPICS)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="chatsae/resources/default_chat.jsonl")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()

    from chatsae.models import load_model

    model, tok = load_model("embedded")
    tok.padding_side = "left"
    items = prompts()[: args.limit]
    out, t0 = [], time.time()
    for start in range(0, len(items), args.batch_size):
        batch = items[start : start + args.batch_size]
        texts = [
            tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in batch
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(  # type: ignore[operator]  # transformers types generate as a Tensor attribute
                **enc,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                repetition_penalty=1.2,
                pad_token_id=tok.pad_token_id,
            )
        for i, p in enumerate(batch):
            answer = tok.decode(gen[i, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            out.append(
                {
                    "id": start + i,
                    "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": answer}],
                }
            )
        print(f"{len(out)}/{len(items)} prompts, {time.time() - t0:.0f}s", flush=True)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    tmp.replace(path)
    print(f"wrote {len(out)} conversations to {path}")


if __name__ == "__main__":
    main()
