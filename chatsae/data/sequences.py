"""Token sequences for the three training methods (FAST, BT(F), BT(P)), length bucketing and padding.

Token classes and chat rendering live in :mod:`chatsae.data.chat_template` (re-exported here).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .chat_template import (
    ASSISTANT,
    PAD_CLASS,
    SYSTEM,
    TEMPLATE,
    TEXT,
    USER,
    ChatTemplateError,
    TokenSequence,
    render_chat,
    render_with_key,
    text_sequence,
    tokenizer_info,
)
from .dedup import NGramDeduplicator
from .formats import DataFormatError, Record

__all__ = [
    "ASSISTANT",
    "PAD_CLASS",
    "SYSTEM",
    "TEMPLATE",
    "TEXT",
    "USER",
    "BucketStats",
    "ChatTemplateError",
    "PaddedBatch",
    "SequenceStats",
    "TokenSequence",
    "block_sequences",
    "bucket_batches",
    "fast_sequences",
    "pad_batch",
    "render_chat",
]


def _slice(seq: TokenSequence, start: int, stop: int) -> TokenSequence:
    return TokenSequence._make(field[start:stop] for field in seq)


def _columns(seq: TokenSequence) -> tuple[list[Any], ...]:
    """The sequence's four lists, to grow or trim them all alike."""
    return seq


# ---------------------------------------------------------------- FAST and block training


@dataclass
class SequenceStats:
    """Counts filled while a sequence generator runs."""

    n_samples: int = 0
    """Records read (the ones passed in; records skipped by ``--skip-bad`` never get here)."""
    n_duplicates: int = 0
    """Samples dropped by the n-gram dedup."""
    n_empty: int = 0
    """Samples dropped because they hold no content token at all (only chat-template tokens, or empty text)."""
    n_truncated: int = 0
    """FAST: samples cut at ``max_length`` (kept, shortened)."""
    n_sequences: int = 0
    n_tokens: int = 0
    """Tokens in the sequences yielded."""
    n_dropped_tokens: int = 0
    """Block training: tokens of the last incomplete block dropped (``drop_last``)."""


def _as_record(i: int, rec) -> Record:
    if isinstance(rec, Record):
        return rec
    if isinstance(rec, str):
        return Record(i, None, rec)
    return Record(i, list(rec), None)


def _samples(records, tokenizer, chat: bool, method: str, dedup_n, stats: SequenceStats, n_check: int = 2):
    """Yield one TokenSequence per kept record (chat-rendered or plain), counting samples and duplicates."""
    info = tokenizer_info(tokenizer, chat)
    dedup = NGramDeduplicator(dedup_n) if dedup_n else None
    for i, rec in enumerate(records):
        rec = _as_record(i, rec)
        if chat and rec.messages is None:
            raise DataFormatError(
                f"record {rec.index} is plain text, but {method} needs chat records (messages); use --method bt-p"
            )
        if not chat and rec.text is None:
            raise DataFormatError(
                f"record {rec.index} is a chat record, but {method} trains on plain text; use --method fast or bt-f"
            )
        stats.n_samples += 1
        if chat:
            assert rec.messages is not None  # checked above
            try:
                seq, key = render_with_key(rec.messages, tokenizer, info, rec.index, check=stats.n_samples <= n_check)
            except ChatTemplateError as e:
                raise ChatTemplateError(f"record {rec.index}: {e}") from e
        else:
            assert rec.text is not None  # checked above
            seq = text_sequence(rec.text, tokenizer, info, rec.index)
            key = [t for t, c in zip(seq.input_ids, seq.token_class, strict=True) if c == TEXT]
        if not key and (not chat or not any(m["content"].strip() for m in rec.messages or [])):
            stats.n_empty += 1  # no content at all (a template may still add its default system prompt)
            continue
        if not key:  # no user/assistant content (e.g. system-only): the system text is the content
            key = [t for t, c in zip(seq.input_ids, seq.token_class, strict=True) if c != TEMPLATE]
        if dedup is not None and dedup.is_duplicate(key):
            stats.n_duplicates += 1
            continue
        yield seq, info


def fast_sequences(
    records: Iterable[Record],
    tokenizer,
    max_length: int = 8192,
    dedup_n: int | None = 20,
    stats: SequenceStats | None = None,
) -> Iterator[TokenSequence]:
    """FAST: each chat sample rendered on its own, truncated at ``max_length``, never concatenated.

    ``dedup_n``: n-gram dedup over the user/assistant content tokens (system prompts, which are often shared by
    every sample, are left out of the key); None disables it. ``records``: :class:`Record` s (message lists and
    strings are also accepted, numbered by position). Sample ids are record indices.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    stats = stats if stats is not None else SequenceStats()
    for seq, _ in _samples(records, tokenizer, True, "FAST", dedup_n, stats):
        if len(seq.input_ids) > max_length:
            seq = _slice(seq, 0, max_length)
            stats.n_truncated += 1
        stats.n_sequences += 1
        stats.n_tokens += len(seq.input_ids)
        yield seq


def block_sequences(
    records: Iterable[Record],
    tokenizer,
    context_size: int = 2048,
    chat: bool = True,
    dedup_n: int | None = None,
    drop_last: bool = True,
    stats: SequenceStats | None = None,
) -> Iterator[TokenSequence]:
    """Block training: samples concatenated in order and cut into blocks of exactly ``context_size`` tokens.

    ``chat=True`` is BT(F): chat-rendered samples, EOS appended to a sample unless its trailing template tokens
    already hold it. ``chat=False`` is BT(P): plain documents as ``[BOS] text [EOS]``. ``drop_last=False`` yields
    the final shorter block instead of dropping it.
    """
    if context_size < 1:
        raise ValueError(f"context_size must be >= 1, got {context_size}")
    stats = stats if stats is not None else SequenceStats()
    buf = TokenSequence([], [], [], [])
    for seq, info in _samples(records, tokenizer, chat, "BT(F)" if chat else "BT(P)", dedup_n, stats):
        for field, part in zip(_columns(buf), seq, strict=True):
            field.extend(part)
        if chat and info.eos_id is not None and not _ends_with(seq, info.eos_id):
            for field, value in zip(_columns(buf), (info.eos_id, True, TEMPLATE, seq.sample_ids[-1]), strict=True):
                field.append(value)
        while len(buf.input_ids) >= context_size:
            stats.n_sequences += 1
            stats.n_tokens += context_size
            yield _slice(buf, 0, context_size)
            for field in _columns(buf):
                del field[:context_size]
    if buf.input_ids and not drop_last:
        stats.n_sequences += 1
        stats.n_tokens += len(buf.input_ids)
        yield buf
    elif drop_last:
        stats.n_dropped_tokens += len(buf.input_ids)


def _ends_with(seq: TokenSequence, token_id: int) -> bool:
    """``token_id`` is among the sequence's trailing template tokens (e.g. ``<|im_end|>\\n``)."""
    for tid, cls in zip(reversed(seq.input_ids), reversed(seq.token_class), strict=True):
        if cls != TEMPLATE:
            return False
        if tid == token_id:
            return True
    return False


# ---------------------------------------------------------------- batching


@dataclass
class BucketStats:
    """Counts of :func:`bucket_batches`: real tokens vs. padded batch area."""

    n_batches: int = 0
    n_sequences: int = 0
    n_tokens: int = 0
    n_padded_tokens: int = 0
    """Sum over batches of ``batch_size * longest_sequence``."""

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.n_tokens / self.n_padded_tokens if self.n_padded_tokens else 0.0


def bucket_batches(
    sequences: Iterable[TokenSequence],
    max_tokens: int = 8192,
    max_batch_size: int = 64,
    bucket_window: int = 512,
    seed: int | None = None,
    stats: BucketStats | None = None,
    max_padding: float | None = None,
) -> Iterator[list[TokenSequence]]:
    """Length bucketing: sort each window of ``bucket_window`` sequences by length and cut it into batches with
    ``len(batch) * longest <= max_tokens`` and ``len(batch) <= max_batch_size`` (a longer sequence goes alone).

    ``seed``: shuffle the batch order within each window. Every sequence is yielded exactly once.
    ``max_padding``: also start a new batch when the next sequence would raise the batch's padding share above this
    (so no batch, hence no window, pads more). Without it, a window holding few budgets' worth of tokens is cut into
    few wide batches: with the harvest's 65,536-token windows at 16k-64k tokens per batch, 11-46% padding on real
    chat data (benchmarks/results/paper_scale_cpu.md); a larger window keeps the batches full at the same bound.
    """
    if max_padding is not None and not 0.0 <= max_padding < 1.0:
        raise ValueError(f"max_padding must be in [0, 1), got {max_padding}")
    stats = stats if stats is not None else BucketStats()
    rng = random.Random(seed) if seed is not None else None

    def flush(window: list[TokenSequence]) -> Iterator[list[TokenSequence]]:
        batches: list[list[TokenSequence]] = []
        real = 0  # tokens of the open batch
        for seq in sorted(window, key=lambda s: len(s.input_ids)):
            n = len(seq.input_ids)
            area = (len(batches[-1]) + 1) * n if batches else 0
            if (
                not batches
                or len(batches[-1]) >= max_batch_size
                or area > max_tokens
                or (max_padding is not None and area - real - n > max_padding * area)
            ):
                batches.append([])
                real = 0
            batches[-1].append(seq)
            real += n
        if rng is not None:
            rng.shuffle(batches)
        for batch in batches:
            stats.n_batches += 1
            stats.n_sequences += len(batch)
            stats.n_tokens += sum(len(s.input_ids) for s in batch)
            stats.n_padded_tokens += len(batch) * len(batch[-1].input_ids)
            yield batch

    window: list[TokenSequence] = []
    for seq in sequences:
        window.append(seq)
        if len(window) >= bucket_window:
            yield from flush(window)
            window = []
    if window:
        yield from flush(window)


class PaddedBatch(NamedTuple):
    """Right-padded ``[B, T]`` tensors of a list of sequences."""

    input_ids: Tensor
    """int64; ``pad_id`` at padding."""
    attention_mask: Tensor
    """int64 1 at tokens, 0 at padding."""
    special_mask: Tensor
    """bool; False at padding."""
    token_class: Tensor
    """int64; ``PAD_CLASS`` (-1) at padding."""
    sample_ids: Tensor
    """int64; -1 at padding."""
    positions: Tensor
    """int64 index of each position in its sequence (``0..T-1`` on every row)."""


def pad_batch(seqs: Sequence[TokenSequence], pad_id: int) -> PaddedBatch:
    """Right-pad ``seqs`` to the longest one; padding is marked by ``attention_mask == 0`` (never by token id)."""
    if not seqs:
        raise ValueError("pad_batch needs at least one sequence")
    b, t = len(seqs), max(len(s.input_ids) for s in seqs)
    out = PaddedBatch(
        torch.full((b, t), pad_id, dtype=torch.long),
        torch.zeros(b, t, dtype=torch.long),
        torch.zeros(b, t, dtype=torch.bool),
        torch.full((b, t), PAD_CLASS, dtype=torch.long),
        torch.full((b, t), -1, dtype=torch.long),
        torch.arange(t).expand(b, t).clone(),
    )
    for row, s in enumerate(seqs):
        n = len(s.input_ids)
        out.input_ids[row, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        out.attention_mask[row, :n] = 1
        out.special_mask[row, :n] = torch.tensor(s.special_mask, dtype=torch.bool)
        out.token_class[row, :n] = torch.tensor(s.token_class, dtype=torch.long)
        out.sample_ids[row, :n] = torch.tensor(s.sample_ids, dtype=torch.long)
    return out
