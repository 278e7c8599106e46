"""Activations without a disk cache, and reading ahead of the trainer.

:class:`StreamingSource` harvests in a producer thread (model forward passes, window by window, as the cache harvest)
and feeds the vectors straight into the mixing buffer while the SAE trains: memory is bounded by the buffer and a
few queued windows, not by the token budget. :class:`Prefetcher` reads any source ahead in a background thread, into
pinned host memory for fast host-to-GPU copies. Both keep the exact-resume contract: ``state_dict`` describes the
position after the last batch the trainer consumed.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..data import TokenSequence
from ..models import HookPoint
from .buffer import MixingBuffer
from .harvest import HarvestConfig, HarvestStats, length_windows, window_activations
from .source import ActivationBatch

BATCH_KEYS = ("token_ids", "special_mask", "positions", "sample_ids")
_DONE = object()


class _Stopped(Exception):
    """Ends a harvest window early when the consumer has gone."""


class _Producer:
    """A daemon thread putting ``make()``'s items into a bounded queue; stops when asked (or on an error, which the
    consumer re-raises)."""

    def __init__(self, make: Callable[[threading.Event], Iterator[Any]], depth: int) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(depth, 1))
        self.stop = threading.Event()
        """Set by :meth:`close`; ``make(stop)`` may watch it to end a long item early."""
        self.thread = threading.Thread(target=self._run, args=(make,), daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make: Callable[[threading.Event], Iterator[Any]]) -> None:
        items = make(self.stop)
        try:
            for item in items:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer thread
            self._put(e)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # a generator over another source: let it stop its own threads now

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class StreamingSource:
    """Training batches harvested on the fly from ``model`` at ``hook``: endless (the data is passed again, epoch
    after epoch), mixed in a buffer of ``buffer_tokens``, resumable (the position is the data window and the buffer).

    ``sequences()`` must give the same token sequences each call (they are re-read every epoch and on resume; windows
    already consumed are skipped without running the model). ``queue_windows`` harvested windows of
    ``opts.shard_tokens`` tokens wait at most in the queue. With ``world_size > 1`` (default: env ``WORLD_SIZE``)
    each rank harvests a disjoint share of the windows (round robin).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        hook: HookPoint,
        sequences: Callable[[], Iterable[TokenSequence]],
        opts: HarvestConfig,
        d_in: int,
        batch_size: int,
        buffer_tokens: int = 65_536,
        seed: int = 0,
        queue_windows: int = 1,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.model, self.tokenizer, self.hook, self.sequences, self.opts = model, tokenizer, hook, sequences, opts
        self.d_in, self.batch_size, self.queue_windows = d_in, batch_size, queue_windows
        self.buffer = MixingBuffer(max(buffer_tokens, 2 * batch_size), batch_size, seed=seed)
        self.epoch, self.window = 0, 0
        self.stats = HarvestStats()
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
        self.rank_sharded = self.world_size > 1
        """Each rank streams its own rows (``batch_size`` = the per-rank batch): the trainer does not slice batches."""

    def windows(
        self,
        epoch: int,
        start: int,
        stop: threading.Event | None = None,
    ) -> Iterator[tuple[int, int, dict[str, Tensor]]]:
        """``(epoch, window, rows)`` from window ``start`` of ``epoch`` on, forever; rows = ``acts [n, d_in]`` and the
        per-token metadata, in harvest order (before mixing). Ends between two model batches once ``stop`` is set."""

        def on_batch(_n: int) -> None:
            if stop is not None and stop.is_set():
                raise _Stopped

        try:
            yield from self._windows(epoch, start, on_batch)
        except _Stopped:
            return

    def _windows(
        self,
        epoch: int,
        start: int,
        on_batch: Callable[[int], None],
    ) -> Iterator[tuple[int, int, dict[str, Tensor]]]:
        while True:
            n = 0
            for w, window in enumerate(length_windows(self.sequences(), self.opts.shard_tokens)):
                if w < start or w % self.world_size != self.rank % self.world_size:
                    continue
                got = window_activations(
                    self.model, self.tokenizer, [self.hook], window, self.opts, self.stats, on_batch
                )
                if got is None:
                    continue
                acts, meta = got
                n += acts[self.hook].shape[0]
                yield epoch, w, {"acts": acts[self.hook], **{k: meta[k] for k in BATCH_KEYS}}
            if n == 0 and start == 0:
                raise ValueError("the data gives no activation vectors to stream (every token excluded?)")
            epoch, start = epoch + 1, 0

    def _upstream(self, producer: _Producer) -> Iterator[dict[str, Tensor]]:
        for epoch, w, rows in producer:
            self.epoch, self.window = epoch, w + 1
            yield rows

    def __iter__(self) -> Iterator[ActivationBatch]:
        epoch, start = self.epoch, self.window
        producer = _Producer(lambda stop: self.windows(epoch, start, stop), self.queue_windows)
        try:
            for rows in self.buffer.batches(self._upstream(producer)):
                yield ActivationBatch(rows["acts"], **{k: rows[k] for k in BATCH_KEYS})
        finally:
            producer.close()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "window": self.window, "buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.window = int(state["epoch"]), int(state["window"])
        self.buffer.load_state_dict(state["buffer"])


def _pinned(batch: ActivationBatch) -> ActivationBatch:
    return ActivationBatch._make(t.pin_memory() if isinstance(t, Tensor) else t for t in batch)


class Prefetcher:
    """Read ``source`` up to ``depth`` batches ahead in a background thread (into pinned memory with ``pin``).

    ``state_dict`` is the wrapped source's state right after the last batch handed out, so a checkpoint resumes
    exactly; the wrapped source's ``state_dict`` must be a snapshot (later iteration must not mutate it in place),
    as those of chatsae's sources are.
    """

    def __init__(self, source: Any, depth: int = 2, pin: bool = False) -> None:
        self.source, self.depth, self.pin = source, depth, pin
        self.d_in = source.d_in
        self._state: dict[str, Any] | None = None

    def _items(self) -> Iterator[tuple[ActivationBatch, dict[str, Any]]]:
        for batch in self.source:
            yield (_pinned(batch) if self.pin else batch), self.source.state_dict()

    def __iter__(self) -> Iterator[ActivationBatch]:
        self._state = self.source.state_dict()
        producer = _Producer(lambda _stop: self._items(), self.depth)
        try:
            for batch, state in producer:
                self._state = state
                yield batch
        finally:
            producer.close()
            self.source.load_state_dict(self._state)  # the source stops where the consumer stopped

    def __getattr__(self, name: str) -> Any:  # the wrapped source's other attributes (cache, describe_row, ...)
        if name == "source":
            raise AttributeError(name)
        return getattr(self.source, name)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict() if self._state is None else self._state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)
        self._state = None


_END = object()
""":meth:`SharedStream.window`: past the last window of the data."""


class SharedStream:
    """One streamed harvest feeding several SAEs (``--cache none`` with several ``--hooks`` / ``--saes``).

    Each data window is run through the model once, capturing every hook, and kept while any reader may still need it;
    :meth:`source` gives each SAE a :class:`StreamingSource` that reads its hook's rows from here instead of running the
    model. A reader sees exactly the windows, in the same order, that a streaming run of its own would harvest, so each
    SAE is the one a single ``--cache none`` run with the same options gives. A reader may run at most ``lead``
    windows ahead of the slowest one (it waits): memory is about ``lead + 1`` windows of every hook, plus each
    reader's mixing buffer. A reader that restarts behind the others (the trainer's initialisation sample is read
    twice) gets windows no longer kept harvested again: the same activations, at the cost of a forward pass.
    One process only (several SAEs under torchrun use the disk cache).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        hooks: list[HookPoint],
        sequences: Callable[[], Iterable[TokenSequence]],
        opts: HarvestConfig,
        lead: int = 2,
    ) -> None:
        self.model, self.tokenizer, self.hooks, self.sequences, self.opts = model, tokenizer, hooks, sequences, opts
        self.lead = max(lead, 1)
        self.stats = HarvestStats()
        self.windows_run = 0
        """Model passes over a data window (for all hooks at once)."""
        self._kept: dict[int, dict[HookPoint, dict[str, Tensor]] | None] = {}
        self._n_windows: int | None = None
        self._walk: tuple[int, Iterator[tuple[int, list[TokenSequence]]]] | None = None
        self._at: dict[int, int] = {}  # reader id -> global index (epoch x n_windows + window) it asked for last
        self.reader_ids = itertools.count()
        """A distinct id for every pass of a reader over the stream (``id(object())`` of a freed object repeats)."""
        self._cond = threading.Condition()
        self._model_lock = threading.Lock()

    def source(
        self,
        hook: HookPoint,
        d_in: int,
        batch_size: int,
        buffer_tokens: int = 65_536,
        seed: int = 0,
        queue_windows: int = 1,
    ) -> StreamingSource:
        """A streaming source of ``hook``'s vectors (its own mixing buffer and seed) reading from this stream."""
        if hook not in self.hooks:
            raise ValueError(f"hook {hook} is not streamed here (hooks: {', '.join(map(str, self.hooks))})")
        return _SharedReader(self, hook, d_in, batch_size, buffer_tokens, seed, queue_windows)

    def window(
        self, reader: int, epoch: int, w: int, check: Callable[[int], None]
    ) -> dict[HookPoint, dict[str, Tensor]] | None | object:
        """Window ``w`` of the data (every hook's rows; None if it keeps no token) for ``reader`` in ``epoch``, or
        ``_END`` past the last window. Waits while ``reader`` would be more than ``lead`` windows ahead of the
        slowest reader; ``check(0)`` is called while waiting (it raises to stop)."""
        with self._cond:
            g = w if self._n_windows is None else epoch * self._n_windows + w
            self._at[reader] = g
            self._cond.notify_all()
            while g - min(self._at.values()) > self.lead:
                self._cond.wait(0.1)
                check(0)
            if w in self._kept:
                return self._kept[w]
        with self._model_lock:  # one model pass at a time; another reader may have run this window meanwhile
            with self._cond:
                if w in self._kept:
                    return self._kept[w]
            window = self._window_at(w)
            if window is None:
                return _END
            got = window_activations(self.model, self.tokenizer, self.hooks, window, self.opts, self.stats)
            self.windows_run += 1
            rows = (
                None
                if got is None
                else {h: {"acts": got[0][h], **{k: got[1][k] for k in BATCH_KEYS}} for h in self.hooks}
            )
            with self._cond:
                self._kept[w] = rows
                self._forget()
            return rows

    def _window_at(self, w: int) -> list[TokenSequence] | None:
        """The token sequences of window ``w`` (walking the data forward; from the start again to go back)."""
        if self._n_windows is not None and w >= self._n_windows:
            return None
        if self._walk is None or self._walk[0] > w:
            self._walk = (0, enumerate(length_windows(self.sequences(), self.opts.shard_tokens)))
        for i, window in self._walk[1]:
            self._walk = (i + 1, self._walk[1])
            if i == w:
                return window
        self._n_windows = self._walk[0]
        self._walk = None
        return None

    def _forget(self) -> None:
        """Drop kept windows that no reader will ask for again soon (all but the ``lead + 1`` from the slowest)."""
        if not self._at:
            return
        lo = min(self._at.values())
        n = self._n_windows
        wanted = {(lo + i) % n if n else lo + i for i in range(self.lead + 1)}
        for w in [w for w in self._kept if w not in wanted]:
            del self._kept[w]

    def _leave(self, reader: int) -> None:
        with self._cond:
            self._at.pop(reader, None)
            self._cond.notify_all()


class _SharedReader(StreamingSource):
    """A :class:`StreamingSource` whose windows come from a :class:`SharedStream` (no model pass of its own)."""

    def __init__(
        self,
        shared: SharedStream,
        hook: HookPoint,
        d_in: int,
        batch_size: int,
        buffer_tokens: int,
        seed: int,
        queue_windows: int,
    ) -> None:
        super().__init__(
            shared.model,
            shared.tokenizer,
            hook,
            shared.sequences,
            shared.opts,
            d_in,
            batch_size,
            buffer_tokens=buffer_tokens,
            seed=seed,
            queue_windows=queue_windows,
            rank=0,
            world_size=1,
        )
        self.shared = shared
        self.stats = shared.stats

    def _windows(
        self,
        epoch: int,
        start: int,
        on_batch: Callable[[int], None],
    ) -> Iterator[tuple[int, int, dict[str, Tensor]]]:
        reader = next(self.shared.reader_ids)
        try:
            while True:
                n, w = 0, start
                while (rows := self.shared.window(reader, epoch, w, on_batch)) is not _END:
                    on_batch(0)
                    if rows is not None:
                        mine = rows[self.hook]  # type: ignore[index]
                        n += mine["acts"].shape[0]
                        yield epoch, w, mine
                    w += 1
                if n == 0 and start == 0:
                    raise ValueError("the data gives no activation vectors to stream (every token excluded?)")
                epoch, start = epoch + 1, 0
        finally:
            self.shared._leave(reader)
