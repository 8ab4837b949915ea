"""The product's one clock (bridge/clock.py): where it can be moved from, and that
nothing in the product or the tests reads the time around it."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bridge.clock import CLOCK_ENV, offset_from
from tests.support.services import ROOT

pytestmark = [pytest.mark.unit, pytest.mark.clock]

REAL = datetime(2026, 12, 3, 6, 30, tzinfo=UTC)
# Calls that read the wall clock: only bridge/clock.py may make them.
CLOCK_CALLS = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"), ("time", "time")}
# SQL that reads the database server's clock. A column DEFAULT now() only stamps a
# record (it never decides what is stored, dropped or counted), so it is allowed.
SQL_CLOCK = re.compile(
    r"(?<!default )\b(now|clock_timestamp|statement_timestamp|transaction_timestamp)\s*\(\)"
    r"|\b(current_date|current_timestamp|localtimestamp)\b",
    re.IGNORECASE,
)
# Files that read the database server's clock on purpose, and why.
SERVER_CLOCK_ALLOWED = {
    "tests/test_partition_hardening.py": "the retention floor is defined on the database server's clock",
}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", timedelta(0)),
        ("2028-02-29T12:00:00Z", datetime(2028, 2, 29, 12, tzinfo=UTC) - REAL),
        ("2026-12-02T07:30:00+01:00", timedelta(days=-1)),
        ("2026-12-03t06:30:00z", timedelta(0)),
    ],
)
def test_the_clock_starts_where_the_variable_says(value: str, expected: timedelta) -> None:
    """An RFC 3339 time with Z or an offset moves the clock by its distance from the
    real time; no variable (or an empty one) leaves it where it is."""
    assert offset_from({CLOCK_ENV: value}, REAL) == expected


@pytest.mark.parametrize("value", ["2028-02-29T12:00:00", "tomorrow", "2028-02-30T12:00:00Z"])
def test_a_clock_time_without_an_offset_or_unreadable_is_refused(value: str) -> None:
    """A naive or malformed time is an error naming the variable, never a guess."""
    with pytest.raises(ValueError, match=CLOCK_ENV):
        offset_from({CLOCK_ENV: value}, REAL)


def python_files() -> list[Path]:
    return sorted(p for top in ("bridge", "loadgen", "tests") for p in (ROOT / top).rglob("*.py"))


def clock_reads(source: str) -> list[tuple[int, str]]:
    """(line, what) of each direct read of the wall clock in Python ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
            if (name, node.func.attr) in CLOCK_CALLS:
                found.append((node.lineno, f"{name}.{node.func.attr}()"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_CLOCK.search(node.value):
            found.append((node.lineno, f"SQL {SQL_CLOCK.search(node.value)[0]!r}"))  # type: ignore[index]
    return found


def test_the_scan_finds_each_way_of_reading_the_clock() -> None:
    """The check below can fail: each form it forbids is found in a sample."""
    sample = (
        "datetime.now(UTC)\ndatetime.datetime.utcnow()\ndate.today()\ntime.time()\n"
        "q = 'SELECT now()'\nr = 'WHERE recorded_at < current_date'\n"
        "ok = 'updated_at timestamptz DEFAULT now()'\ntime.monotonic()\n"
    )
    assert [line for line, _ in clock_reads(sample)] == [1, 2, 3, 4, 5, 6]


def test_nothing_reads_the_wall_clock_around_bridge_clock() -> None:
    """The product, the load generator and the tests ask bridge.clock what time it is
    (or use fixed times), and SQL gets the time as a parameter: moving the clock then
    moves all of them, daemon subprocesses included."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in python_files()
        if path != ROOT / "bridge" / "clock.py" and path != Path(__file__)
        for line, what in clock_reads(path.read_text(encoding="utf-8"))
        if not (what.startswith("SQL") and str(path.relative_to(ROOT)) in SERVER_CLOCK_ALLOWED)
    ]
    assert offenders == []
