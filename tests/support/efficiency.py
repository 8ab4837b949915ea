"""Checks of the efficiency roll-up against the live computation, and readings made
in-process for the tests that drive the writer directly."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from bridge.analytics.report import EfficiencyRow, HourSummary, fleet_report, hourly_summary, vehicle_report
from bridge.ingest.parse import Reading
from bridge.streams import METER, VEHICLE

__all__ = ["assert_report_exact", "assert_table_exact", "reading", "rolled_up"]


def reading(stream: str, device: str, at: datetime, kwh: float) -> Reading:
    """A parsed reading, as the daemon hands it to the writer."""
    spec = METER if stream == "meter" else VEHICLE
    return Reading(spec, device, at, at, (kwh, None, None, None), None, f"{stream}/{device}", b"")


async def assert_report_exact(conn: asyncpg.Connection, schema: str, start: datetime, end: datetime) -> None:
    """The report (roll-up where clean, live elsewhere) equals the live query, bit for
    bit: for the fleet, for the hourly summary, and for each mapped vehicle."""
    assert await fleet_report(conn, schema, start, end) == await fleet_report(conn, schema, start, end, live=True)
    assert await hourly_summary(conn, schema, start, end) == await hourly_summary(conn, schema, start, end, live=True)
    for vehicle in await conn.fetch(f'SELECT vehicle_id FROM "{schema}".vehicle_meter_mapping'):
        vehicle_id = vehicle["vehicle_id"]
        rows = await vehicle_report(conn, schema, vehicle_id, start, end)
        assert rows == await vehicle_report(conn, schema, vehicle_id, start, end, live=True)


def sums(row: asyncpg.Record) -> tuple[float, float, float | None, int, int]:
    """DC, AC, efficiency, matched, unmatched of a stored roll-up row."""
    dc, ac = row["total_dc_kwh"], row["total_ac_kwh"]
    return dc, ac, dc / ac if ac else None, row["matched"], row["unmatched"]


async def rolled_up(conn: asyncpg.Connection, schema: str, start: datetime, end: datetime) -> list[EfficiencyRow]:
    """The roll-up's rows of mapped vehicles in [start, end), as the report orders them."""
    records = await conn.fetch(
        f"""SELECT e.* FROM "{schema}".efficiency_hourly e
            JOIN "{schema}".vehicle_meter_mapping map ON map.vehicle_id = e.vehicle_id AND map.meter_id = e.meter_id
            WHERE e.hour >= $1 AND e.hour < $2 ORDER BY e.hour DESC, e.vehicle_id COLLATE "C\"""",
        start,
        end,
    )
    return [EfficiencyRow(r["vehicle_id"], r["hour"], *sums(r)) for r in records]


async def assert_table_exact(conn: asyncpg.Connection, schema: str, start: datetime, end: datetime) -> None:
    """After a pass over everything: both roll-up tables equal the live query over
    [start, end) (whole hours), and nothing is left to recompute."""
    assert await rolled_up(conn, schema, start, end) == await fleet_report(conn, schema, start, end, live=True)
    fleet = await conn.fetch(
        f'SELECT * FROM "{schema}".efficiency_fleet_hourly WHERE hour >= $1 AND hour < $2 AND vehicles > 0'
        " ORDER BY hour DESC",
        start,
        end,
    )
    summaries = [HourSummary(r["hour"], r["vehicles"], *sums(r)) for r in fleet]
    assert summaries == await hourly_summary(conn, schema, start, end, live=True)
    assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".efficiency_invalidations') == 0
