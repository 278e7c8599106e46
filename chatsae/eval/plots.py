"""Figures of the compare / sweep reports (matplotlib, Agg: no display needed; files written atomically).

Figures are built on :class:`matplotlib.figure.Figure` directly (never ``pyplot``), so nothing global is touched.
Missing values (``None`` / NaN: e.g. LM loss not computed) are left out; a panel without any value says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

from ..core.utils import atomic_file


class BarPanel(NamedTuple):
    """One bar-chart panel: ``values[group][series]`` drawn as groups of bars (one colour per series). Bars start at
    0, or with ``from_zero=False`` (log-scale quantities such as log2 MSE) just below the smallest value, so that
    differences stay visible."""

    title: str
    ylabel: str
    values: dict[str, dict[str, float | None]]
    from_zero: bool = True
    errors: dict[str, dict[str, tuple[float, float] | None]] | None = None
    """``errors[group][series] = (low, high)``: an interval drawn as an error bar on that bar."""


class LinePanel(NamedTuple):
    """One x-y panel: ``lines[name]`` is a list of ``(x, y)`` points, drawn sorted by x."""

    title: str
    xlabel: str
    ylabel: str
    lines: dict[str, list[tuple[float | None, float | None]]]
    log_x: bool = False
    errors: dict[str, list[tuple[Any, Any, Any, Any] | None]] | None = None
    """``errors[name][i] = (x_low, x_high, y_low, y_high)`` of point i of ``lines[name]`` (None or non-finite
    bounds: no bar), drawn as error bars."""


def _finite(v: object) -> TypeGuard[float]:
    """``v`` is a finite int or float (not None, NaN or infinite)."""
    return isinstance(v, (int, float)) and math.isfinite(v)


def _figure(n_panels: int, title: str, panel_size: tuple[float, float] = (5.0, 3.8)) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure  # matplotlib loads only for plots (~1 s)

    cols = min(n_panels, 2)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n_panels]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    return path


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")


def _baseline(panel: BarPanel) -> float:
    if panel.from_zero:
        return 0.0
    ys = [y for per in panel.values.values() for y in per.values() if _finite(y)]
    ys += [b for per in (panel.errors or {}).values() for iv in per.values() if iv for b in iv if _finite(b)]
    if not ys:
        return 0.0
    low, high = min(ys), max(ys)
    return low - max(0.15 * (high - low), 0.05 * abs(low), 0.1)


def bar_chart(panels: Sequence[BarPanel], path: str | Path, title: str, series_label: str = "") -> Path:
    """Grouped bar charts, one panel each (groups on the x axis, one bar per series; one legend for the figure),
    written as PNG."""
    fig, axes = _figure(len(panels), title)
    legend: dict[str, Any] = {}
    for ax, panel in zip(axes, panels, strict=True):
        groups = list(panel.values)
        series = list(dict.fromkeys(s for g in groups for s in panel.values[g]))
        width = 0.8 / max(len(series), 1)
        base = _baseline(panel)
        colours = {name: f"C{j}" for j, name in enumerate(series)}
        for j, name in enumerate(series):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
            keep = [(x, y, g) for x, g in zip(xs, groups, strict=True) if _finite(y := panel.values[g].get(name))]
            if not keep:
                continue
            bars = ax.bar(
                [x for x, _, _ in keep],
                [y - base for _, y, _ in keep],
                bottom=base,
                width=width,
                label=name,
                color=colours[name],
            )
            ivs = [((panel.errors or {}).get(g) or {}).get(name) for _, _, g in keep]
            if any(ivs):
                err = [
                    [max(y - iv[0], 0) if iv else 0 for (_, y, _), iv in zip(keep, ivs, strict=True)],
                    [max(iv[1] - y, 0) if iv else 0 for (_, y, _), iv in zip(keep, ivs, strict=True)],
                ]
                ax.errorbar(
                    [x for x, _, _ in keep],
                    [y for _, y, _ in keep],
                    yerr=err,
                    fmt="none",
                    ecolor="black",
                    elinewidth=0.8,
                    capsize=2,
                )
            ax.bar_label(bars, labels=[f"{y:.4g}" for _, y, _ in keep], fontsize=7, padding=1)
            legend.setdefault(name, bars)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(panel.title)
        ax.set_ylabel(panel.ylabel)
        ax.margins(y=0.12)
        if panel.from_zero:
            ax.axhline(0, color="black", linewidth=0.6)
        if not any(_finite(y) for per in panel.values.values() for y in per.values()):
            _no_data(ax)
    if legend:
        fig.legend(list(legend.values()), list(legend), title=series_label or None, loc="outside right upper")
    return _save(fig, path)


def line_chart(panels: Sequence[LinePanel], path: str | Path, title: str, legend_title: str = "") -> Path:
    """x-y panels (one marked line per name, points sorted by x; optional log x axis), written as PNG."""
    fig, axes = _figure(len(panels), title, panel_size=(5.5, 4.0))
    for ax, panel in zip(axes, panels, strict=True):
        drawn = False
        for name, points in panel.lines.items():
            errs = (panel.errors or {}).get(name) or [None] * len(points)
            pts = sorted(
                (x, y, e or (None,) * 4)
                for (x, y), e in zip(points, errs, strict=True)
                if _finite(x) and _finite(y) and (x > 0 or not panel.log_x)
            )
            if not pts:
                continue
            line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)[0]
            drawn = True
            if any(_finite(b) for p in pts for b in p[2]):

                def bar(v: float, lo: Any, hi: Any) -> list[float]:
                    return [max(v - lo, 0) if _finite(lo) else 0, max(hi - v, 0) if _finite(hi) else 0]

                xe = list(zip(*(bar(x, e[0], e[1]) for x, _, e in pts), strict=True))
                ye = list(zip(*(bar(y, e[2], e[3]) for _, y, e in pts), strict=True))
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    xerr=xe,
                    yerr=ye,
                    fmt="none",
                    ecolor=line.get_color(),
                    elinewidth=0.8,
                    capsize=2,
                    alpha=0.7,
                )
        if panel.log_x and drawn:
            from matplotlib.ticker import LogFormatter  # matplotlib loads only for plots

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(LogFormatter())  # plain numbers (10, 20, 50), not 2x10^1
            ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(title=legend_title or None, fontsize=8)
        else:
            _no_data(ax)
    return _save(fig, path)
