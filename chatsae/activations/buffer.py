"""The mixing buffer (FAST §3.3, as SAELens): fill, shuffle, emit half, keep half, refill.

Rows are dicts of equally long tensors (``acts`` plus per-token metadata, or just global row ``index`` for an on-disk
cache). The buffer's whole state — contents and generator — is a ``state_dict`` so a training run resumes exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

Rows = dict[str, Tensor]


def _cat(parts: list[Rows]) -> Rows:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _len(rows: Rows) -> int:
    return len(next(iter(rows.values()))) if rows else 0


class MixingBuffer:
    """Shuffle rows coming from ``refill()`` calls: fill to ``capacity``, shuffle, emit the first half in batches of
    ``batch_size``, keep the rest, refill. When the upstream is exhausted the remaining rows are emitted too."""

    def __init__(self, capacity: int, batch_size: int, seed: int = 0) -> None:
        if capacity < 2 * batch_size:
            raise ValueError(f"buffer capacity {capacity} must be at least twice the batch size {batch_size}")
        self.capacity, self.batch_size = capacity, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.rows: Rows = {}
        self.out: Rows = {}  # shuffled rows waiting to be emitted
        self.out_pos = 0

    def batches(self, upstream: Iterator[Rows]) -> Iterator[Rows]:
        """Yield ``batch_size`` rows at a time, mixing ``upstream`` chunks; resumable via ``state_dict``."""
        exhausted = False
        while True:
            while self.out and self.out_pos + self.batch_size <= _len(self.out):
                batch = {k: v[self.out_pos : self.out_pos + self.batch_size] for k, v in self.out.items()}
                self.out_pos += self.batch_size
                yield batch
            # carry the tail of the emitted half back into the buffer
            if self.out and self.out_pos < _len(self.out):
                tail = {k: v[self.out_pos :] for k, v in self.out.items()}
                self.rows = _cat([self.rows, tail]) if self.rows else tail
            self.out, self.out_pos = {}, 0
            parts = [self.rows] if self.rows else []
            n = _len(self.rows)
            while n < self.capacity and not exhausted:
                try:
                    chunk = next(upstream)
                except StopIteration:
                    exhausted = True
                    break
                parts.append(chunk)
                n += _len(chunk)
            if n < self.batch_size:
                return
            rows = _cat(parts)
            perm = torch.randperm(n, generator=self.generator)
            rows = {k: v[perm] for k, v in rows.items()}
            half = n if exhausted else max(n // 2, self.batch_size)
            half -= half % self.batch_size
            self.out = {k: v[:half] for k, v in rows.items()}
            self.rows = {k: v[half:] for k, v in rows.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "out": {k: v[self.out_pos :] for k, v in self.out.items()},
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self.out, self.out_pos = dict(state["rows"]), dict(state["out"]), 0
        self.generator.set_state(state["generator"])
