"""Padding share of chatsae's length bucketing on real chat length distributions, at GPU harvest budgets (CPU only).

    .venv/bin/python benchmarks/padding_share.py [--budgets 4096,16384,65536] [--windows 65536,1048576]
                                                 [--max-batch-size 1024] [--max-padding 0.05]

FAST sequences (embedded tokenizer, chat template, n-gram dedup) of chatsae's bundled data and of
``../shared/data``'s alpaca, gsm8k and sharegpt, and all four together; each is cut into windows of ``--windows``
tokens in file order (the harvest buckets each window of ``HarvestConfig.shard_tokens``, 65,536 by default) and
bucketed by ``bucket_batches`` at each budget, without and with ``max_padding``. Prints one line per cell: padding
share and real tokens per batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from chatsae.activations.harvest import length_windows
from chatsae.activations.pipeline import default_data_path
from chatsae.data.formats import read_records
from chatsae.data.sequences import BucketStats, TokenSequence, bucket_batches, fast_sequences
from chatsae.models.loading import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA = {
    "default": default_data_path(),
    "alpaca": SHARED / "alpaca_4000.json",
    "gsm8k": SHARED / "gsm8k_train.jsonl",
    "sharegpt": SHARED / "sharegpt_dummy_500.json",
}


def share(
    seqs: list[TokenSequence], budget: int, window: int, max_batch_size: int, max_padding: float | None
) -> BucketStats:
    stats = BucketStats()
    for w in length_windows(seqs, window):
        for _ in bucket_batches(w, budget, max_batch_size, len(w), stats=stats, max_padding=max_padding):
            pass
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="4096,16384,32768,65536")
    ap.add_argument("--windows", default="65536,262144,1048576")
    ap.add_argument("--max-batch-size", type=int, default=1024)
    ap.add_argument("--max-padding", type=float, default=0.05)
    a = ap.parse_args()
    tok = load_tokenizer("embedded")
    data = {k: list(fast_sequences(read_records(p), tok)) for k, p in DATA.items() if Path(p).exists()}
    data["all four"] = [s for v in data.values() for s in v]
    for name, seqs in data.items():
        lens = [len(s.input_ids) for s in seqs]
        print(
            f"## {name}: {len(seqs):,} sequences, {sum(lens):,} tokens, mean {sum(lens) / len(lens):.0f}, "
            f"max {max(lens)}"
        )
        print("| budget | window | padding (tokens/batch) | with max_padding | ")
        for budget in [int(v) for v in a.budgets.split(",")]:
            for window in [int(v) for v in a.windows.split(",")]:
                cells = []
                for bound in (None, a.max_padding):
                    st = share(seqs, budget, window, a.max_batch_size, bound)
                    cells.append(f"{st.padding_fraction:.1%} ({st.n_tokens / st.n_batches:,.0f})")
                print(f"| {budget:,} | {window:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
