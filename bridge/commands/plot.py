"""``fleet-bridge report --plot FILE.png``: efficiency and energy per hour as a picture.

matplotlib is an optional extra, imported only here and only when a plot is drawn;
everything that decides what is drawn is a pure function tested without it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bridge.analytics.pairing import HOUR
from bridge.analytics.report import EfficiencyRow, HourSummary

if TYPE_CHECKING:  # matplotlib is optional
    from matplotlib.figure import Figure

__all__ = [
    "PLOT_MISSING",
    "efficiency_figure",
    "efficiency_line",
    "hour_ticks",
    "hourly_totals",
    "plot_available",
    "plot_problem",
    "plot_report",
]

PLOT_MISSING: Final = "--plot needs matplotlib: pip install 'fleet-telemetry-bridge[plot]'"
MAX_TICKS: Final = 12
# Tick spacings in hours: whole hours, then days once hours get crowded.
TICK_STEPS: Final = (1, 2, 3, 6, 12, 24, 48, 168, 336, 720)

Series = list[tuple[datetime, float, float, float | None]]


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_problem(path: Path) -> str | None:
    """Why the picture could not be written to ``path`` (checked before any query runs), or None."""
    if path.suffix.lower() != ".png":
        return f"--plot {path}: the file name must end in .png"
    if path.is_dir():
        return f"--plot {path}: is a directory"
    folder = path.parent
    if not folder.is_dir():
        return f"--plot {path}: directory {folder} does not exist"
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"--plot {path}: not writable"
    return None


def hourly_totals(rows: Sequence[EfficiencyRow] | Sequence[HourSummary]) -> Series:
    """(hour, dc, ac, efficiency) over the vehicles, oldest hour first: one readable
    series whether the report is for one vehicle, ten thousand, or a summary."""
    totals: dict[datetime, tuple[float, float]] = {}
    for row in rows:
        dc, ac = totals.get(row.hour, (0.0, 0.0))
        totals[row.hour] = (dc + row.total_dc_kwh, ac + row.total_ac_kwh)
    return [(hour, dc, ac, dc / ac if ac else None) for hour, (dc, ac) in sorted(totals.items())]


def efficiency_line(series: Series) -> tuple[list[datetime], list[float]]:
    """The efficiency line's points, each at the middle of its hour. Where hours are
    missing (or efficiency is undefined) a NaN point breaks the line: a line drawn
    across the gap would show values that were never measured."""
    xs: list[datetime] = []
    ys: list[float] = []
    previous: datetime | None = None
    for hour, _, _, efficiency in series:
        if previous is not None and hour - previous > HOUR:
            xs.append(previous + HOUR)
            ys.append(math.nan)
        xs.append(hour + HOUR / 2)
        ys.append(math.nan if efficiency is None else efficiency)
        previous = hour
    return xs, ys


def hour_ticks(first: datetime, last: datetime) -> list[datetime]:
    """X-axis ticks for the hours ``first``..``last``: whole hours (or days), at most
    MAX_TICKS of them, from the start of ``first`` to the end of ``last``, so that one
    hour shows as an hour, not as a timeline of minutes."""
    span = (last - first) // HOUR + 1
    step = next((step for step in TICK_STEPS if span / step <= MAX_TICKS), TICK_STEPS[-1])
    tick = first - (first.hour % step) * HOUR if step < 24 else first.replace(hour=0)
    ticks = []
    while tick <= last + HOUR:
        if tick >= first:
            ticks.append(tick)
        tick += step * HOUR
    return ticks


def efficiency_figure(rows: Sequence[EfficiencyRow] | Sequence[HourSummary], title: str) -> Figure:
    """Efficiency (top) and DC/AC energy (bottom) per hour; the x axis spans whole
    hours from the first to the last. The Agg backend needs no display."""
    import matplotlib  # optional dependency, loaded only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = hourly_totals(rows)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), height_ratios=(1, 1.3))
    top.plot(*efficiency_line(series), marker="o", color="tab:green")
    top.set_ylabel("efficiency (DC / AC)")
    top.set_title(title)
    top.grid(alpha=0.3)
    middles = [hour + HOUR / 2 for hour, *_ in series]
    width = timedelta(minutes=24)  # two bars side by side within each hour
    bottom.bar([m - width / 2 for m in middles], [dc for _, dc, _, _ in series], width,
               label="DC delivered", color="tab:blue")  # fmt: skip
    bottom.bar([m + width / 2 for m in middles], [ac for _, _, ac, _ in series], width,
               label="AC consumed", color="tab:orange")  # fmt: skip
    bottom.margins(y=0.2)  # headroom for the legend above the bars
    bottom.set_ylabel("energy per hour (kWh)")
    bottom.set_xlabel("hour (UTC)")
    bottom.legend(loc="upper right", ncols=2)
    bottom.grid(alpha=0.3, axis="y")
    if series:
        first, last = series[0][0], series[-1][0]
        bottom.set_xlim(first, last + HOUR)
        ticks = hour_ticks(first, last)
        bottom.set_xticks(ticks, labels=[f"{tick:%Y-%m-%d %H:%M}" for tick in ticks])
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def plot_report(rows: Sequence[EfficiencyRow] | Sequence[HourSummary], path: Path, title: str) -> None:
    """Draw :func:`efficiency_figure` to a PNG file."""
    fig = efficiency_figure(rows, title)
    import matplotlib.pyplot as plt  # after efficiency_figure chose the backend

    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
