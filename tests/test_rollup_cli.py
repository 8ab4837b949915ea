"""``fleet-bridge rollup``: usage errors, what it prints, exit codes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from bridge import clock
from bridge.analytics.pairing import floor_hour
from bridge.analytics.rollup import PassResult
from bridge.commands import rollup
from bridge.commands.cli import main
from bridge.schema.partitions import ensure_partitions
from bridge.streams import HISTORY_TABLES

pytestmark = pytest.mark.clock

H10 = datetime(2026, 11, 27, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--from", "-2h"], "give both --from and --to"),
        (["--from", "now", "--to", "-1h"], "--from must be before --to"),
    ],
)
def test_a_bad_range_exits_2_before_connecting(
    argv: list[str], problem: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Half a range or an empty one is a usage error, found before any connection."""
    monkeypatch.setenv("FLEET_BRIDGE_DB_DSN", UNREACHABLE)
    assert main(["rollup", *argv]) == 2
    assert problem in capsys.readouterr().err


@pytest.mark.unit
def test_an_unreachable_database_exits_1_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A runtime failure: exit 1, one line on stderr, no traceback."""
    monkeypatch.setenv("FLEET_BRIDGE_DB_DSN", UNREACHABLE)
    assert main(["rollup"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fleet-bridge rollup: ")
    assert err.count("\n") == 1


@pytest.mark.unit
def test_the_result_is_a_line_per_day_then_the_totals() -> None:
    """Hours are grouped by UTC day; a pass with nothing to do says so."""
    result = PassResult({H10: 10, H10 + HOUR: 9, H10 + 20 * HOUR: 0}, invalidations=7, seconds=1.25)
    assert rollup.render_result(result).splitlines() == [
        "day (UTC)   hours  vehicle-hours",
        "----------  -----  -------------",
        "2026-11-27      2             19",
        "2026-11-28      1              0",
        "rolled up 3 hour(s), 19 vehicle-hour(s) in 1.2 s; invalidations cleared: 7",
    ]
    assert rollup.render_result(PassResult(invalidations=2)) == "nothing to roll up (invalidations cleared: 2)\n"


@pytest.mark.unit
def test_a_long_pass_shows_progress_every_few_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    """Progress goes to stderr at most every PROGRESS_EVERY_S, never for the last hour."""
    ticks = iter([0.0, 1.0, 6.0, 7.0, 12.0])
    progress = rollup._Progress(lambda: next(ticks))
    for done in (1, 2, 3, 4):
        progress(done, 4, H10 + done * HOUR)
    assert capsys.readouterr().err.splitlines() == ["rollup: 2/4 hours (50 %), at 2026-11-27T12:00Z, 6 s"]


@pytest.mark.integration
async def test_a_pass_prints_what_it_did_and_a_second_finds_nothing(
    pg_dsn: str, db: asyncpg.Connection, schema: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`fleet-bridge rollup` rolls up the settled dirty hours and prints them; run
    again, it has nothing to do. With a range it recomputes every hour of it."""
    monkeypatch.setenv("FLEET_BRIDGE_DB_DSN", pg_dsn)
    monkeypatch.setenv("FLEET_BRIDGE_DB_SCHEMA", schema)
    hour = floor_hour(clock.now()) - 2 * HOUR
    for table in HISTORY_TABLES:
        await ensure_partitions(db, schema, table, [hour.date()])
    await db.execute(f"INSERT INTO \"{schema}\".vehicle_meter_mapping VALUES ('EV-1', 'MTR-1')")
    await db.execute(
        f'INSERT INTO "{schema}".vehicle_telemetry_history (vehicle_id, recorded_at, received_at, kwh_delivered_dc)'
        " VALUES ('EV-1', $1, $1, 1.0)",
        hour + timedelta(minutes=30),
    )
    await db.execute(
        f'INSERT INTO "{schema}".efficiency_invalidations (hour_from, hour_to, vehicle_ids, meter_ids, marked_at)'
        " VALUES ($1, $2, '{EV-1}', '{}', $1)",
        hour,
        hour + HOUR,
    )

    assert await asyncio.to_thread(main, ["rollup"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == [f"{hour:%Y-%m-%d}", "1", "1"]
    assert out[3].startswith("rolled up 1 hour(s), 1 vehicle-hour(s) in ")
    assert out[3].endswith("; invalidations cleared: 1")

    assert await asyncio.to_thread(main, ["rollup"]) == 0
    assert capsys.readouterr().out == "nothing to roll up (invalidations cleared: 0)\n"

    requested = ["--from", (hour - HOUR).isoformat(), "--to", (hour + HOUR).isoformat()]
    assert await asyncio.to_thread(main, ["rollup", *requested]) == 0
    assert "rolled up 2 hour(s), 1 vehicle-hour(s)" in capsys.readouterr().out
