"""What an evaluation reads: the records it selects (held-out split, sample cap), the token sequences it builds from
them the way the SAE's method says (cut at a token budget), and the tokenizer's special token ids (the strict MSE_st
set)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from ..data.chat_template import tokenizer_info
from ..data.formats import Record, split_records
from ..data.methods import data_method
from ..data.sequences import TokenSequence
from .config import EvalConfig


def select_records(records: Iterable[Record], cfg: EvalConfig) -> Iterable[Record]:
    """Apply the held-out split (``cfg.holdout``, ``cfg.holdout_seed``) then ``cfg.max_samples``."""
    if cfg.holdout:
        records = split_records(records, cfg.holdout, seed=cfg.holdout_seed or 0).heldout
    return itertools.islice(records, cfg.max_samples) if cfg.max_samples else records


def build_sequences(records: Iterable[Record], tokenizer: Any, cfg: EvalConfig) -> list[TokenSequence]:
    """Token sequences for ``cfg.method`` (fast: one per sample; bt-f / bt-p: blocks, the last partial block kept),
    cut at ``cfg.max_tokens`` in total. No dedup: every selected record is evaluated."""
    if cfg.method is None:
        raise ValueError("EvalConfig.method is unset: resolve the config against the SAE first (resolve_config)")
    seqs = data_method(cfg.method, "EvalConfig.method").sequences(
        records, tokenizer, max_length=cfg.max_length, context_size=cfg.context_size, drop_last=False
    )
    out: list[TokenSequence] = []
    total = 0
    for seq in seqs:
        if cfg.max_tokens is not None and total + len(seq.input_ids) > cfg.max_tokens:
            room = cfg.max_tokens - total
            if room > 0:
                out.append(TokenSequence._make(f[:room] for f in seq))
            break
        out.append(seq)
        total += len(seq.input_ids)
    return out


def special_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's special token ids (the strict MSE_st set), as the chat renderer collects them."""

    return sorted(tokenizer_info(tokenizer, chat=False).special_ids)
