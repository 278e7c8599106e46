"""Harvesting: run the model on token sequences (stopping at the hook) and collect per-token activation vectors.

Padding never leaves this module: only positions with ``attention_mask == 1`` are kept. Position 0 — an attention
sink from the middle layers on, with ~20,000x the squared norm of other tokens (methods.md §5) — is excluded by
default (``exclude_first_position``); special tokens are kept (FAST) unless ``exclude_special``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data import TokenSequence, bucket_batches, pad_batch
from ..models import HookPoint, capture
from ..progress import Progress
from .cache import CacheWriter, Manifest


@dataclass
class HarvestOptions:
    """Which tokens become training vectors, and how the model is batched."""

    exclude_first_position: bool = True
    """Drop position 0 of every sequence (the attention sink; in FAST the first <|im_start|> of each sample)."""
    exclude_special: bool = False
    """Drop chat-template tokens (FAST keeps them, as the paper)."""
    exclude_bos: bool = False
    """Drop every BOS token (e.g. the document separators of BT(P))."""
    batch_tokens: int = 4096
    """Padded tokens per model forward (length bucketing keeps padding rare)."""
    max_batch_size: int = 64
    """Sequences per model forward at most."""
    shard_tokens: int = 65_536
    """Tokens per cache shard (and per resumable harvest window)."""
    max_tokens: int | None = None
    """Stop harvesting after this many vectors (train: default --total-tokens; harvest: all the data)."""


class HarvestStats:
    """Counters shown at the end of a harvest."""

    def __init__(self) -> None:
        self.sequences = 0
        self.tokens_kept = 0
        self.tokens_real = 0
        self.tokens_padded = 0
        self.seconds = 0.0

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.tokens_real / max(self.tokens_padded, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sequences": self.sequences, "tokens_kept": self.tokens_kept, "tokens_real": self.tokens_real,
            "padding_fraction": round(self.padding_fraction, 5), "seconds": round(self.seconds, 2),
            "tokens_per_s": round(self.tokens_real / max(self.seconds, 1e-9), 1),
        }  # fmt: skip


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def activations_for_batch(
    model: torch.nn.Module, hook: HookPoint, seqs: list[TokenSequence], pad_id: int, opts: HarvestOptions,
    bos_id: int | None = None, stats: HarvestStats | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """Run one padded batch up to ``hook``; return kept vectors ``[n, d]`` and their metadata ``{key: [n]}``."""
    b = pad_batch(seqs, pad_id)
    device = model_device(model)
    acts = capture(model, hook, b.input_ids.to(device), b.attention_mask.to(device))
    keep = b.attention_mask.bool()
    if opts.exclude_first_position:
        keep &= b.positions != 0
    if opts.exclude_special:
        keep &= ~b.special_mask
    if opts.exclude_bos and bos_id is not None:
        keep &= b.input_ids != bos_id
    if stats is not None:
        stats.sequences += len(seqs)
        stats.tokens_real += int(b.attention_mask.sum())
        stats.tokens_padded += b.attention_mask.numel()
        stats.tokens_kept += int(keep.sum())
    meta = {
        "token_ids": b.input_ids[keep], "special_mask": b.special_mask[keep], "token_class": b.token_class[keep],
        "positions": b.positions[keep], "sample_ids": b.sample_ids[keep],
    }  # fmt: skip
    return acts[keep.to(acts.device)].float().cpu(), meta


def _windows(sequences: Iterable[TokenSequence], window_tokens: int) -> Iterator[list[TokenSequence]]:
    window: list[TokenSequence] = []
    n = 0
    for s in sequences:
        window.append(s)
        n += len(s.input_ids)
        if n >= window_tokens:
            yield window
            window, n = [], 0
    if window:
        yield window


def harvest_to_cache(
    model: torch.nn.Module,
    tokenizer: Any,
    hook: HookPoint,
    sequences: Iterable[TokenSequence],
    directory: str | Path,
    manifest: Manifest,
    opts: HarvestOptions,
    max_tokens: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[Manifest, HarvestStats]:
    """Harvest ``sequences`` into the cache at ``directory`` until the data ends or ``max_tokens`` vectors are kept.

    With ``resume``, windows already written are skipped (the sequence stream is deterministic) and harvesting goes on.
    """
    writer = CacheWriter.open(directory, manifest, resume=resume)
    m = writer.manifest
    stats = HarvestStats()
    if m.complete:
        return m, stats
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bos_id = tokenizer.bos_token_id
    total = max_tokens or 0
    t0 = time.perf_counter()
    with Progress(total, "harvest", enabled=progress and total > 0, unit="tokens") as bar:
        bar.advance(m.n_tokens)
        for w, window in enumerate(_windows(sequences, opts.shard_tokens)):
            if w < m.windows_done:
                continue
            if max_tokens is not None and m.n_tokens >= max_tokens:
                break
            parts, metas = [], []
            for batch in bucket_batches(window, max_tokens=opts.batch_tokens, max_batch_size=opts.max_batch_size,
                                        bucket_window=len(window)):  # fmt: skip
                acts, meta = activations_for_batch(model, hook, batch, pad_id, opts, bos_id, stats)
                parts.append(acts)
                metas.append(meta)
                stats.seconds = time.perf_counter() - t0
                bar.advance(acts.shape[0], **{"tok/s": f"{stats.tokens_real / max(stats.seconds, 1e-9):,.0f}",
                                              "pad": f"{100 * stats.padding_fraction:.1f}%"})  # fmt: skip
            if not parts:
                continue
            meta_cat = {k: torch.cat([mm[k] for mm in metas]) for k in metas[0]}
            writer.write_shard(torch.cat(parts), meta_cat, windows_done=w + 1)
    stats.seconds = time.perf_counter() - t0
    m = writer.finish(harvest=stats.as_dict())
    return m, stats
