"""Write a plain-text sample corpus from chatsae's bundled chat data, for BT(P) runs without a download.

BT(P) (block training on pretraining-style text) needs plain text, not chat records. This script turns every
conversation of ``chatsae/resources/default_chat.jsonl`` into one plain-text document (the messages' contents joined
by spaces, no chat template, no role names) and writes them one per line, the ``.txt`` format chatsae reads. It is a
small stand-in for a real pretraining corpus (the FAST paper uses pile-uncopyrighted): the words are the same as in
the chat data, so it shows the BT(P) path working rather than a fair BT(P) baseline.

Run: ``.venv/bin/python scripts/make_sample_text.py [OUT]`` (default ``runs/sample_text.txt``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chatsae.activations.pipeline import default_data_path


def documents(path: Path) -> list[str]:
    """One plain-text document per chat record of ``path`` (JSONL with a ``messages`` list)."""
    docs: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            messages = json.loads(line)["messages"]
            text = " ".join(" ".join(str(m["content"]).split()) for m in messages)
            if text:
                docs.append(text)
    return docs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/sample_text.txt", help="output .txt file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    docs = documents(default_data_path())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(docs) + "\n", encoding="utf-8")
    print(f"{len(docs)} documents -> {out}")


if __name__ == "__main__":
    main()
