"""A progress bar (rich) with live fields, falling back to a plain line every ~5% when not on a terminal."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """``with Progress(total, "train") as bar: bar.advance(1, loss="0.1")``."""

    def __init__(self, total: int, label: str, enabled: bool = True, unit: str = "steps") -> None:
        self.total, self.label, self.enabled, self.unit = total, label, enabled, unit
        self.done = 0
        self.fields: dict[str, str] = {}
        self.tty = sys.stderr.isatty()
        self._rich: RichProgress | None = None
        self._next_print = 0.0
        self._t0 = time.perf_counter()

    def __enter__(self) -> Progress:
        if self.enabled and self.tty:
            self._rich = RichProgress(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=self.total, info="")
        return self

    def advance(self, n: int = 1, **fields: str) -> None:
        self.done += n
        self.fields.update(fields)
        if not self.enabled:
            return
        info = " ".join(f"{k} {v}" for k, v in self.fields.items())
        if self._rich is not None:
            self._rich.update(self._task, advance=n, info=info)
        elif self.done >= self._next_print or self.done >= self.total:
            elapsed = time.perf_counter() - self._t0
            print(f"{self.label}: {self.done}/{self.total} {self.unit} [{elapsed:.0f}s] {info}", file=sys.stderr)
            self._next_print = self.done + max(self.total // 20, 1)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._rich is not None:
            self._rich.stop()
