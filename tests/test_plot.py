"""``fleet-bridge report --plot`` (bridge/commands/plot.py): what is drawn, and a PNG."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bridge.analytics.report import EfficiencyRow, HourSummary
from bridge.commands.plot import efficiency_figure, efficiency_line, hour_ticks, hourly_totals, plot_report

pytestmark = pytest.mark.unit

H13 = datetime(2026, 11, 27, 13, tzinfo=UTC)
HOUR = timedelta(hours=1)
ROWS = [
    EfficiencyRow("EV-00002", H13, 2.25, 2.5, 0.9, 5, 1),
    EfficiencyRow("EV-00010", H13, 0.0, 0.0, None, 0, 3),
    EfficiencyRow("EV-00002", H13 - HOUR, 1.0, 1.25, 0.8, 4, 0),
]


def test_plot_series_sums_the_fleet_per_hour_oldest_first() -> None:
    """The plot draws one series: DC and AC summed over vehicles, efficiency of the sums;
    a summary's rows are that series already."""
    assert hourly_totals(ROWS) == [(H13 - HOUR, 1.0, 1.25, 0.8), (H13, 2.25, 2.5, 0.9)]
    assert hourly_totals([ROWS[1]]) == [(H13, 0.0, 0.0, None)]
    assert hourly_totals([HourSummary(H13, 2, 2.25, 2.5, 0.9, 5, 4)]) == [(H13, 2.25, 2.5, 0.9)]


def test_no_line_is_drawn_across_missing_hours() -> None:
    """Points sit at the middle of their hour; a missing hour (or an undefined
    efficiency) puts a NaN in the line, which breaks it there."""
    series = [(H13, 1.0, 2.0, 0.5), (H13 + HOUR, 1.0, 0.0, None), (H13 + 4 * HOUR, 3.0, 4.0, 0.75)]
    xs, ys = efficiency_line(series)
    assert xs == [H13 + HOUR / 2, H13 + HOUR * 1.5, H13 + 2 * HOUR, H13 + HOUR * 4.5]
    assert ys[0] == 0.5
    assert math.isnan(ys[1])
    assert math.isnan(ys[2])
    assert ys[3] == 0.75


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        (1, [H13, H13 + HOUR]),
        (3, [H13 + n * HOUR for n in range(4)]),
        (25, [datetime(2026, 11, 27, h, tzinfo=UTC) for h in (15, 18, 21)] + [datetime(2026, 11, 28, tzinfo=UTC)]
         + [datetime(2026, 11, 28, h, tzinfo=UTC) for h in (3, 6, 9, 12)]),
    ],
)  # fmt: skip
def test_ticks_are_whole_hours_however_short_the_range(hours: int, expected: list[datetime]) -> None:
    """One hour gets a tick at its start and its end (not minutes); a day gets
    whole-hour ticks on a spacing that keeps them 12 or fewer (3 h for 25 hours)."""
    assert hour_ticks(H13, H13 + (hours - 1) * HOUR) == expected


def test_a_single_hour_plot_spans_that_hour(tmp_path: Path) -> None:
    """The x axis of a one-hour report runs from the hour's start to its end, with
    whole-hour ticks only, and a PNG is written (no display needed)."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    fig = efficiency_figure([ROWS[0]], "one hour")
    try:
        axis = fig.axes[1]
        left, right = axis.get_xlim()
        assert right - left == pytest.approx(1 / 24)  # matplotlib's date axis counts days
        assert [label.get_text() for label in axis.get_xticklabels()] == ["2026-11-27 13:00", "2026-11-27 14:00"]
    finally:
        plt.close(fig)
    path = tmp_path / "report.png"
    plot_report(ROWS, path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
