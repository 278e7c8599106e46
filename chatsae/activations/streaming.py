"""Activations without a disk cache, and reading ahead of the trainer.

:class:`StreamingSource` harvests in a producer thread (model forward passes, window by window, as the cache harvest)
and feeds the vectors straight into the mixing buffer while the SAE trains: memory is bounded by the buffer and a
few queued windows, not by the token budget. :class:`Prefetcher` reads any source ahead in a background thread, into
pinned host memory for fast host-to-GPU copies. Both keep the exact-resume contract: ``state_dict`` describes the
position after the last batch the trainer consumed.
"""

from __future__ import annotations

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
from .harvest import HarvestOptions, HarvestStats, _windows, window_activations
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

    def __init__(self, model: torch.nn.Module, tokenizer: Any, hook: HookPoint, sequences: Callable[[],
                 Iterable[TokenSequence]], opts: HarvestOptions, d_in: int, batch_size: int,
                 buffer_tokens: int = 65_536, seed: int = 0, queue_windows: int = 1, rank: int | None = None,
                 world_size: int | None = None) -> None:  # fmt: skip
        self.model, self.tokenizer, self.hook, self.sequences, self.opts = model, tokenizer, hook, sequences, opts
        self.d_in, self.batch_size, self.queue_windows = d_in, batch_size, queue_windows
        self.buffer = MixingBuffer(max(buffer_tokens, 2 * batch_size), batch_size, seed=seed)
        self.epoch, self.window = 0, 0
        self.stats = HarvestStats()
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
        self.rank_sharded = self.world_size > 1
        """Each rank streams its own rows (``batch_size`` = the per-rank batch): the trainer does not slice batches."""

    def windows(self, epoch: int, start: int, stop: threading.Event | None = None,
                ) -> Iterator[tuple[int, int, dict[str, Tensor]]]:  # fmt: skip
        """``(epoch, window, rows)`` from window ``start`` of ``epoch`` on, forever; rows = ``acts [n, d_in]`` and the
        per-token metadata, in harvest order (before mixing). Ends between two model batches once ``stop`` is set."""

        def on_batch(_n: int) -> None:
            if stop is not None and stop.is_set():
                raise _Stopped

        try:
            yield from self._windows(epoch, start, on_batch)
        except _Stopped:
            return

    def _windows(self, epoch: int, start: int, on_batch: Callable[[int], None],
                 ) -> Iterator[tuple[int, int, dict[str, Tensor]]]:  # fmt: skip
        while True:
            n = 0
            for w, window in enumerate(_windows(self.sequences(), self.opts.shard_tokens)):
                if w < start or w % self.world_size != self.rank % self.world_size:
                    continue
                got = window_activations(self.model, self.tokenizer, [self.hook], window, self.opts, self.stats,
                                         on_batch)  # fmt: skip
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
