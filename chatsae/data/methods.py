"""The data methods, one registry: FAST (each chat sample on its own), BT(F) (blocks of concatenated chat samples)
and BT(P) (blocks of plain pretraining text) — their names, labels, defaults and sequence builders. Harvest,
evaluation, feature collection, steering and the studies all take their method facts from here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from .formats import Record
from .sequences import SequenceStats, TokenSequence, block_sequences, fast_sequences

MethodName = Literal["fast", "bt-f", "bt-p"]
FAST_MAX_LENGTH = 8192
"""FAST: samples are truncated at this many tokens (the paper's setting)."""
BLOCK_CONTEXT_SIZE = 2048
"""BT(F) / BT(P): block length in tokens (the paper's setting)."""


@dataclass(frozen=True)
class DataMethod:
    """How one method turns records into token sequences."""

    name: MethodName
    label: str
    """How reports name it (the paper's notation)."""
    chat: bool
    """Renders chat samples with the model's chat template (needs one)."""
    packed: bool
    """Concatenates samples into fixed-length blocks (else one sequence per sample)."""

    def sequences(
        self,
        records: Iterable[Record],
        tokenizer: Any,
        *,
        max_length: int | None = None,
        context_size: int | None = None,
        dedup_n: int | None = None,
        drop_last: bool = True,
        stats: SequenceStats | None = None,
    ) -> Iterator[TokenSequence]:
        """Token sequences of ``records``: one per sample cut at ``max_length`` (FAST), or blocks of ``context_size``
        tokens (``drop_last=False`` keeps the last partial block). None = the method's default length."""
        if not self.packed:
            return fast_sequences(records, tokenizer, max_length or FAST_MAX_LENGTH, dedup_n, stats)
        size = context_size or BLOCK_CONTEXT_SIZE
        return block_sequences(
            records, tokenizer, context_size=size, chat=self.chat, dedup_n=dedup_n, drop_last=drop_last, stats=stats
        )


METHODS: dict[str, DataMethod] = {
    m.name: m
    for m in (
        DataMethod("fast", "FAST", chat=True, packed=False),
        DataMethod("bt-f", "BT(F)", chat=True, packed=True),
        DataMethod("bt-p", "BT(P)", chat=False, packed=True),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
"""In the papers' order: fast, bt-f, bt-p."""


def data_method(name: str, where: str = "method") -> DataMethod:
    """The method called ``name`` (ValueError naming ``where`` and the choices otherwise)."""
    if name not in METHODS:
        raise ValueError(f"{where}: {name!r} is not a data method; choose one of {', '.join(METHOD_NAMES)}")
    return METHODS[name]
