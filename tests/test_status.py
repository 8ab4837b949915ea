"""``fleet-bridge status``: devices reporting and stale, AC/DC power of the reporting
ones, newest and oldest reading; as a table and as JSON."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from bridge import clock
from bridge.commands.status import FleetStatus, StreamStatus, render_json, render_table
from tests.support.helpers import run_cli

pytestmark = pytest.mark.clock

AS_OF = datetime(2026, 11, 27, 12, 0, 5, 250000, tzinfo=UTC)
MIDNIGHT = datetime(2026, 11, 27, tzinfo=UTC)
SAMPLE = FleetStatus(
    as_of=AS_OF,
    stale_after_s=180,
    meter=StreamStatus(reporting=3, stale=1, power_kw=12.3456789, newest=AS_OF, oldest=MIDNIGHT),
    vehicle=StreamStatus(reporting=0, stale=0, power_kw=0.0, newest=None, oldest=None),
)


@pytest.mark.unit
def test_json_has_counts_power_totals_and_rfc3339_times() -> None:
    """JSON: per-stream counts and reading range (null when the stream is empty), and
    AC/DC power totals in kW rounded to the watt."""
    assert orjson.loads(render_json(SAMPLE)) == {
        "as_of": "2026-11-27T12:00:05.250Z",
        "stale_after_s": 180,
        "total_ac_power_kw": 12.346,
        "total_dc_power_kw": 0.0,
        "meter": {
            "devices": 4,
            "reporting": 3,
            "stale": 1,
            "newest_reading": "2026-11-27T12:00:05.250Z",
            "oldest_reading": "2026-11-27T00:00:00.000Z",
        },
        "vehicle": {"devices": 0, "reporting": 0, "stale": 0, "newest_reading": None, "oldest_reading": None},
    }


@pytest.mark.unit
def test_table_has_one_aligned_line_per_stream_and_the_power_totals() -> None:
    """Table: a header, one line per stream with '-' for missing times, then AC and DC power."""
    assert render_table(SAMPLE).splitlines() == [
        "fleet at 2026-11-27T12:00:05Z (stale: no reading for 180 s)",
        "",
        "stream   devices  reporting  stale  newest reading        oldest reading",
        "meter          4          3      1  2026-11-27T12:00:05Z  2026-11-27T00:00:00Z",
        "vehicle        0          0      0  -                     -",
        "",
        "total AC power (reporting meters):   12.346 kW",
        "total DC power (reporting vehicles): 0.000 kW",
    ]


async def run_status(env: dict[str, str], *args: str) -> str:
    done = await asyncio.to_thread(run_cli, ["status", *args], env)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.integration
async def test_status_reports_a_hand_made_fleet(
    db: asyncpg.Connection, schema: str, bridge_env: dict[str, str]
) -> None:
    """Against the current-state tables: devices older than metrics.stale_after_s are
    stale and left out of the power sums; a reading without power_kw adds nothing."""
    real = clock.now()
    now = real.replace(microsecond=real.microsecond // 1000 * 1000)
    fresh, old = now - timedelta(seconds=30), now - timedelta(hours=2)
    meters = [("MTR-1", fresh, 1.5), ("MTR-2", now, 2.25), ("MTR-3", fresh, None), ("MTR-4", old, 7.0)]
    vehicles = [("EV-1", fresh, 3.0), ("EV-2", old, 11.0), ("EV-3", old - timedelta(minutes=5), 0.5)]
    for stream, rows, energy in (("meter", meters, "kwh_consumed_ac"), ("vehicle", vehicles, "kwh_delivered_dc")):
        await db.executemany(
            f'INSERT INTO "{schema}".{stream}_current_state ({stream}_id, recorded_at, received_at, {energy}, power_kw)'
            " VALUES ($1, $2, $2, 0.1, $3)",
            rows,
        )
    env = {**bridge_env, "FLEET_BRIDGE_METRICS_STALE_AFTER_S": "600"}

    doc = orjson.loads(await run_status(env, "--format", "json"))
    stamp = "{:%Y-%m-%dT%H:%M:%S.%f}".format
    assert doc["stale_after_s"] == 600
    assert (doc["total_ac_power_kw"], doc["total_dc_power_kw"]) == (3.75, 3.0)
    assert doc["meter"] == {
        "devices": 4,
        "reporting": 3,
        "stale": 1,
        "newest_reading": stamp(now)[:-3] + "Z",
        "oldest_reading": stamp(old)[:-3] + "Z",
    }
    assert doc["vehicle"] == {
        "devices": 3,
        "reporting": 1,
        "stale": 2,
        "newest_reading": stamp(fresh)[:-3] + "Z",
        "oldest_reading": stamp(old - timedelta(minutes=5))[:-3] + "Z",
    }

    lines = (await run_status(env)).splitlines()
    cells = [re.split(r"\s{2,}", line) for line in lines[2:5]]
    assert cells[0] == ["stream", "devices", "reporting", "stale", "newest reading", "oldest reading"]
    assert cells[1][:4] == ["meter", "4", "3", "1"]
    assert cells[2][:4] == ["vehicle", "3", "1", "2"]
    assert lines[-2:] == [
        "total AC power (reporting meters):   3.750 kW",
        "total DC power (reporting vehicles): 3.000 kW",
    ]
