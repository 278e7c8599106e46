"""The activation-source interface the trainer consumes, and a source over an in-memory/on-disk tensor.

A source is an iterable of :class:`ActivationBatch` (``[batch, d_in]`` float vectors plus optional per-token
metadata) that can report and restore its position, so that training can resume exactly where it stopped.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from ..core.faults import is_disk_full


class ActivationBatch(NamedTuple):
    """One batch of activation vectors and what is known about the tokens they came from."""

    acts: Tensor
    """``[batch, d_in]`` activations (raw, un-normalised)."""
    token_ids: Tensor | None = None
    """``[batch]`` int64 token id of each vector."""
    special_mask: Tensor | None = None
    """``[batch]`` bool: the token is a special (chat-template) token."""
    positions: Tensor | None = None
    """``[batch]`` int64 position of the token in its sequence."""
    sample_ids: Tensor | None = None
    """``[batch]`` int64 id of the sample (FAST) or block (BT) the token belongs to."""
    rows: Tensor | None = None
    """``[batch]`` int64 row of each vector in its source (for ``source.describe_row``: where a bad vector is)."""


@runtime_checkable
class ActivationSource(Protocol):
    """Iterable of :class:`ActivationBatch` with a resumable position."""

    d_in: int

    def __iter__(self) -> Iterator[ActivationBatch]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


_META_KEYS = ("token_ids", "special_mask", "positions", "sample_ids")
_NOT_VALID = {
    ".npy": "not a valid .npy file (expected a float [N, d_in] array written by numpy.save; truncated?)",
    ".safetensors": "not a valid safetensors file (truncated?)",
    ".pt": "not a valid PyTorch file (truncated, or not written by torch.save?)",
    ".pth": "not a valid PyTorch file (truncated, or not written by torch.save?)",
}


def read_tensor_file(path: Path) -> tuple[Any, dict[str, Tensor]]:
    """(activations, metadata tensors) of an activation file (``.npy`` memory-mapped); a file the library cannot
    read is a :class:`ValueError` naming it and what it should hold."""
    try:
        if path.suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), {}
        if path.suffix == ".safetensors":
            d: dict[str, Any] = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                return obj, {}
            d = obj
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        if is_disk_full(e):
            raise
        raise ValueError(f"{path}: {_NOT_VALID[path.suffix]}") from e
    except Exception as e:  # safetensors' own error type is not importable under one name in every release
        if type(e).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{path}: {_NOT_VALID[path.suffix]}") from e
    if "acts" not in d:
        what = "no tensor named 'acts'" if path.suffix == ".safetensors" else "dict without an 'acts' entry"
        raise ValueError(f"{path}: {what} (found {sorted(map(str, d))})")
    return d["acts"], {k: d[k] for k in _META_KEYS if k in d}


class TensorSource:
    """Batches from a ``[N, d_in]`` tensor, reshuffled every epoch with a seeded permutation; endless.

    Files: ``.safetensors`` (key ``acts``, optional ``token_ids``/``special_mask``/``positions``/``sample_ids``),
    ``.pt`` (a tensor or such a dict, loaded with ``weights_only=True``) or ``.npy`` (memory-mapped).
    """

    def __init__(
        self,
        acts: Tensor | np.ndarray,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        meta: dict[str, Tensor] | None = None,
    ) -> None:
        if acts.ndim != 2:
            raise ValueError(f"activations must be [N, d_in], got shape {tuple(acts.shape)}")
        if acts.shape[0] < batch_size:
            raise ValueError(f"only {acts.shape[0]} activation vectors, fewer than one batch of {batch_size}")
        self.acts = acts
        self.meta = meta or {}
        self.d_in = int(acts.shape[1])
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.index = 0  # batches emitted in this epoch
        self.path: Path | None = None
        """The file the activations were read from (named in error messages), if any."""

    @classmethod
    def from_file(cls, path: str | Path, batch_size: int, seed: int = 0) -> TensorSource:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: activation file not found")
        if path.suffix not in (".npy", ".safetensors", ".pt", ".pth"):
            raise ValueError(f"{path}: unknown activation file type {path.suffix!r} (.safetensors, .pt or .npy)")
        acts, meta = read_tensor_file(path)
        if not isinstance(acts, (Tensor, np.ndarray)) or not (
            acts.dtype.is_floating_point if isinstance(acts, Tensor) else np.issubdtype(acts.dtype, np.floating)
        ):
            got = (
                f"{type(acts).__name__} of {acts.dtype}"
                if isinstance(acts, (Tensor, np.ndarray))
                else type(acts).__name__
            )
            raise ValueError(f"{path}: expected a float [N, d_in] activation array, got {got}")
        try:
            source = cls(acts, batch_size, seed=seed, meta=meta)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        source.path = path
        return source

    def _order(self) -> Tensor:
        n = self.acts.shape[0]
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(n, generator=g)

    def __iter__(self) -> Iterator[ActivationBatch]:
        n_batches = self.acts.shape[0] // self.batch_size
        while True:
            order = self._order()
            while self.index < n_batches:
                idx = order[self.index * self.batch_size : (self.index + 1) * self.batch_size]
                idx = idx.sort().values
                self.index += 1
                yield self._gather(idx)
            self.epoch += 1
            self.index = 0

    def _gather(self, idx: Tensor) -> ActivationBatch:
        if isinstance(self.acts, np.ndarray):
            acts = torch.from_numpy(np.ascontiguousarray(self.acts[idx.numpy()])).float()
        else:
            acts = self.acts[idx].float()
        meta = {k: v[idx] for k, v in self.meta.items()}
        return ActivationBatch(acts, **meta, rows=idx)

    def describe_row(self, row: int) -> str:
        """Where row ``row`` of the activations is (``FILE, row N``)."""
        return f"{self.path or 'activation tensor'}, row {row}"

    def where(self) -> str:
        """The file the activations came from (named in errors about their width)."""
        return str(self.path or "activation tensor")

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
