"""Streaming n-gram deduplication over token ids (FAST, Algorithm 1).

A sample is a duplicate if any of its n-gram hashes was seen in an earlier sample; otherwise all of its n-gram hashes
are remembered. A sample shorter than ``n`` counts as one gram (the whole sample). Hashes are stable 64-bit values
(the same on every run and machine): each id is mixed with the splitmix64 finaliser, the window is combined as a
polynomial in an odd constant modulo 2**64 (numpy, vectorised), and the length is mixed in before a final splitmix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BASE = 0x100000001B3  # odd multiplier of the polynomial (FNV prime)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def ngram_hashes(ids: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """``[max(len(ids) - n + 1, 1)]`` uint64 hashes of the n-grams of ``ids`` (the whole sample if shorter than n)."""
    arr = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        mixed = _splitmix(arr)
        width = min(n, len(arr))
        powers = np.array([pow(_BASE, width - 1 - j, 2**64) for j in range(width)], dtype=np.uint64)
        if len(arr) == 0:
            grams = np.zeros(1, dtype=np.uint64)
        else:
            windows = np.lib.stride_tricks.sliding_window_view(mixed, width)  # [n_grams, width]
            grams = (windows * powers).sum(axis=1, dtype=np.uint64)
        return _splitmix(grams ^ (np.uint64(width) * _GOLDEN))


class NGramDeduplicator:
    """Streaming dedup state: ``is_duplicate(ids)`` answers and, for a new sample, remembers its n-grams.

    Memory grows with the number of distinct n-grams kept (a Python set of ints, ~60-80 bytes each).
    """

    def __init__(self, n: int = 20):
        if n < 1:
            raise ValueError(f"n-gram size must be >= 1, got {n}")
        self.n = n
        self.n_seen = 0
        self.n_dropped = 0
        self._seen: set[int] = set()

    def is_duplicate(self, ids: Sequence[int] | np.ndarray) -> bool:
        """True if any n-gram of ``ids`` was seen before (counted as dropped); else add its n-grams."""
        self.n_seen += 1
        hashes = ngram_hashes(ids, self.n).tolist()
        if not self._seen.isdisjoint(hashes):
            self.n_dropped += 1
            return True
        self._seen.update(hashes)
        return False

    @property
    def n_kept(self) -> int:
        return self.n_seen - self.n_dropped

    def __len__(self) -> int:
        """Number of distinct n-gram hashes remembered."""
        return len(self._seen)
