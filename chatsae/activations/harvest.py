"""Harvesting: run the model on token sequences (stopping at the hook) and collect per-token activation vectors.

Padding never leaves this module: only positions with ``attention_mask == 1`` are kept. Position 0 — an attention
sink from the middle layers on, with ~20,000x the squared norm of other tokens (methods.md §5) — is excluded by
default (``exclude_first_position``); special tokens are kept (FAST) unless ``exclude_special``.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core import distributed as pg
from ..core.config import check, validate
from ..core.locking import DirLock
from ..core.progress import Progress
from ..data import TokenSequence, bucket_batches, pad_batch
from ..models import HookPoint
from ..models.prefix import capture_sharing_prefix
from . import sharding
from .cache import CacheWriter, Manifest, check_cache_dir, finished_cache


@dataclass
class HarvestConfig:
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
    max_padding: float | None = None
    """Start a new model batch when the next sequence would raise its padding share above this (e.g. 0.05 with a GPU's
    large --batch-tokens, where length bucketing inside a shard window alone pads 14-35% on chat data); None: no
    bound. Batches then hold fewer tokens: raise --shard-tokens with --batch-tokens to keep them full."""
    max_tokens: int | None = None
    """Stop harvesting after this many vectors (train: default --total-tokens; harvest: all the data)."""
    share_prefix: bool = True
    """Run the tokens every sequence of a batch opens with (a chat template's system prompt) once per batch, not once
    per sequence (chatsae.models.prefix; the same vectors up to float rounding); train / compare / sweep evaluate
    the same way."""

    def __post_init__(self) -> None:
        validate(self, positive=("batch_tokens", "max_batch_size", "shard_tokens", "max_tokens"))
        bound = self.max_padding
        check(bound is None or 0.0 <= bound < 1.0, "max_padding", f"must be in [0, 1), got {bound}")


HarvestOptions = HarvestConfig  # deprecated alias: the name before configs were all *Config


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
            "sequences": self.sequences,
            "tokens_kept": self.tokens_kept,
            "tokens_real": self.tokens_real,
            "padding_fraction": round(self.padding_fraction, 5),
            "seconds": round(self.seconds, 2),
            "tokens_per_s": round(self.tokens_real / max(self.seconds, 1e-9), 1),
        }


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def activations_for_batch(
    model: torch.nn.Module,
    hook: HookPoint | list[HookPoint],
    seqs: list[TokenSequence],
    pad_id: int,
    opts: HarvestOptions,
    bos_id: int | None = None,
    stats: HarvestStats | None = None,
) -> tuple[Any, dict[str, Tensor]]:
    """Run one padded batch up to ``hook``; return kept vectors ``[n, d]`` and their metadata ``{key: [n]}``.

    With a list of hooks (one forward pass, stopping after the last), the vectors are a ``{hook: [n, d]}`` dict; the
    same tokens are kept at every hook."""
    hooks = hook if isinstance(hook, list) else [hook]
    b = pad_batch(seqs, pad_id)
    device = model_device(model)
    acts = capture_sharing_prefix(model, hooks, b.input_ids.to(device), b.attention_mask.to(device), opts.share_prefix)
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
        "token_ids": b.input_ids[keep],
        "special_mask": b.special_mask[keep],
        "token_class": b.token_class[keep],
        "positions": b.positions[keep],
        "sample_ids": b.sample_ids[keep],
    }
    kept = {h: a[keep.to(a.device)].float().cpu() for h, a in acts.items()}
    return (kept if isinstance(hook, list) else kept[hook]), meta


def length_windows(sequences: Iterable[TokenSequence], window_tokens: int) -> Iterator[list[TokenSequence]]:
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


def window_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    hooks: list[HookPoint],
    window: list[TokenSequence],
    opts: HarvestOptions,
    stats: HarvestStats,
    on_batch: Any = None,
) -> tuple[dict[HookPoint, Tensor], dict[str, Tensor]] | None:
    """The kept vectors ``{hook: [n, d]}`` and metadata ``{key: [n]}`` of one data window (length-bucketed model
    batches, one forward pass per batch for all hooks); None if the window keeps no token. ``on_batch(n_kept)`` is
    called after each model batch (progress)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    parts: dict[HookPoint, list[Tensor]] = {h: [] for h in hooks}
    metas = []
    for batch in bucket_batches(
        window,
        max_tokens=opts.batch_tokens,
        max_batch_size=opts.max_batch_size,
        bucket_window=len(window),
        max_padding=opts.max_padding,
    ):
        acts, meta = activations_for_batch(model, list(hooks), batch, pad_id, opts, tokenizer.bos_token_id, stats)
        for h in hooks:
            parts[h].append(acts[h])
        metas.append(meta)
        if on_batch is not None:
            on_batch(int(meta["token_ids"].shape[0]))
    if not metas:
        return None
    return {h: torch.cat(v) for h, v in parts.items()}, {k: torch.cat([mm[k] for mm in metas]) for k in metas[0]}


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
    The cache directory is locked while this runs (a second writer gets a clear error); the manifest records the
    budget asked (``info["max_tokens"]``) and whether the data ran out (``info["exhausted"]``), so that a complete
    cache is reused only for a budget it covers (see :meth:`CacheWriter.open`); when the data itself gives fewer
    vectors than ``max_tokens``, a warning with the counts goes to stderr. Before writing, the size the cache will
    need is printed and the harvest is refused when the disk lacks the space (:func:`check_disk_space`).
    """
    manifests, stats = harvest_to_caches(
        model, tokenizer, {hook: (directory, manifest)}, sequences, opts, max_tokens, resume, progress
    )
    return manifests[hook], stats


def harvest_to_caches(
    model: torch.nn.Module,
    tokenizer: Any,
    caches: Mapping[HookPoint, tuple[str | Path, Manifest]],
    sequences: Iterable[TokenSequence],
    opts: HarvestOptions,
    max_tokens: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[dict[HookPoint, Manifest], HarvestStats]:
    """:func:`harvest_to_cache` for several hooks from one forward pass per batch: one cache directory per hook.

    Under torchrun (``WORLD_SIZE`` > 1) each rank harvests its token-balanced part of ``sequences`` into its own
    shards of each cache, ``ceil(max_tokens / W)`` vectors at most (:func:`chatsae.train.sharding.harvest_ranks`)."""

    if pg.world_size() > 1:

        def run(writers: dict[HookPoint, CacheWriter], budget: int | None) -> Any:
            if not all(w.manifest.complete for w in writers.values()):
                check_disk_space(list(writers.values()), budget)
            return _harvest_locked(
                model,
                tokenizer,
                sharding.shard_sequences(sequences),
                writers,
                opts,
                budget,
                progress and pg.rank() == 0,
            )

        ms, stats = sharding.harvest_ranks(caches, max_tokens, resume, run)
        return ms, stats or HarvestStats()
    for directory, manifest in caches.values():
        check_cache_dir(directory)
        sharding.check_harvest_world(Path(directory), max_tokens)
        manifest.info["max_tokens"] = max_tokens
    done = {h: finished_cache(d, m, max_tokens) for h, (d, m) in caches.items()}
    if all(m is not None for m in done.values()):  # every cache is finished: read them, no lock needed
        ms, stats = {h: m for h, m in done.items() if m is not None}, HarvestStats()
    else:
        with contextlib.ExitStack() as stack:
            writers = {}
            for h, (directory, manifest) in caches.items():
                stack.enter_context(DirLock(directory, "a harvest"))
                writers[h] = CacheWriter.open(directory, manifest, resume)
            if not all(w.manifest.complete for w in writers.values()):
                check_disk_space(list(writers.values()), max_tokens)
            ms, stats = _harvest_locked(model, tokenizer, sequences, writers, opts, max_tokens, progress)
    for h, m in ms.items():
        note = m.repeat_note(max_tokens)
        if note:
            print(f"{caches[h][0]}: {note}", file=sys.stderr)
    return ms, stats


META_BYTES = 33
"""Bytes per vector of a cache's metadata columns (token id, special flag, token class, position, sample id)."""


def check_disk_space(writers: list[CacheWriter], max_tokens: int | None) -> None:
    """Print the disk space the harvest will add (``max_tokens`` vectors per cache, less what is written) and raise
    OSError when the file system of the cache directories has less free space; nothing is known (nor checked) when
    ``max_tokens`` is None (all the data)."""
    if max_tokens is None:
        return
    need = 0
    for w in writers:
        m = w.manifest
        per_vector = m.d_in * (2 if m.dtype in ("float16", "bfloat16") else 4) + META_BYTES
        need += max(max_tokens - m.n_tokens, 0) * per_vector
    directory = writers[0].dir
    free = shutil.disk_usage(directory).free
    where = ", ".join(str(w.dir) for w in writers)
    print(
        f"activation cache: about {need / 2**30:.2f} GiB to write in {where} ({free / 2**30:.1f} GiB free)",
        file=sys.stderr,
    )
    if need > free:
        raise OSError(
            f"{directory}: not enough disk space for the activation cache: it needs about "
            f"{need / 2**30:.2f} GiB ({max_tokens:,} vectors), {free / 2**30:.2f} GiB are free; free space, "
            "choose another --cache-dir, lower --total-tokens, or stream without a cache (--cache none)"
        )


def _harvest_locked(
    model: torch.nn.Module,
    tokenizer: Any,
    sequences: Iterable[TokenSequence],
    writers: dict[HookPoint, CacheWriter],
    opts: HarvestOptions,
    max_tokens: int | None,
    progress: bool,
) -> tuple[dict[HookPoint, Manifest], HarvestStats]:
    stats = HarvestStats()
    todo = {h: w for h, w in writers.items() if not w.manifest.complete}
    if not todo:
        return {h: w.manifest for h, w in writers.items()}, stats
    start = min(w.manifest.windows_done for w in todo.values())
    n_tokens = min(w.manifest.n_tokens for w in todo.values())
    total = max_tokens or 0
    t0 = time.perf_counter()
    exhausted = True
    with Progress(total, "harvest", enabled=progress and total > 0, unit="tokens") as bar:
        bar.advance(n_tokens)

        def on_batch(n: int) -> None:
            stats.seconds = time.perf_counter() - t0
            bar.advance(
                n,
                **{
                    "tok/s": f"{stats.tokens_real / max(stats.seconds, 1e-9):,.0f}",
                    "pad": f"{100 * stats.padding_fraction:.1f}%",
                },
            )

        for w, window in enumerate(length_windows(sequences, opts.shard_tokens)):
            if w < start:
                continue
            if max_tokens is not None and n_tokens >= max_tokens:
                exhausted = False
                break
            got = window_activations(model, tokenizer, list(todo), window, opts, stats, on_batch)
            if got is None:
                continue
            acts, meta = got
            for h, writer in todo.items():
                if w >= writer.manifest.windows_done:  # after a crash between two caches' writes
                    writer.write_shard(acts[h], meta, windows_done=w + 1)
            n_tokens = min(wr.manifest.n_tokens for wr in todo.values())
    stats.seconds = time.perf_counter() - t0
    for writer in todo.values():
        writer.finish(harvest=stats.as_dict(), exhausted=exhausted)
    return {h: w.manifest for h, w in writers.items()}, stats
