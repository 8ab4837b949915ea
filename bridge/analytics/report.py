"""The charging-efficiency report (docs/contract.md section 6) as a library: one row per
vehicle and UTC hour, or per hour over the vehicles (the summary).

Where the roll-up has an hour (a row in ``efficiency_fleet_hourly``) a vehicle's
row is read from ``efficiency_hourly``, unless the hour is dirty for that vehicle:
an invalidation names it or its meter, or the row was paired with a meter the
vehicle is no longer mapped to. Everything else (dirty vehicle-hours, hours not
rolled up, the partial hours at the ends of the range) is computed live by
:mod:`bridge.analytics.pairing`, the computation the roll-up itself runs. Both
sources are read in ONE snapshot, so the result is what the live computation
gives at that instant, to the bit. ``live=True`` skips the roll-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Final, NamedTuple

import asyncpg

from bridge.analytics.pairing import FLEET_SUMS, HOUR, NO_JIT, check_range, floor_hour, hour_rows_sql, range_args
from bridge.db import Conn, qualified
from bridge.errors import BridgeError

__all__ = [
    "EfficiencyRow",
    "HourSummary",
    "UnmappedVehicleError",
    "fleet_report",
    "hour_pieces",
    "hourly_summary",
    "joined",
    "vehicle_report",
]

# Parameters of the queries below after the range's $1..$4 (bridge.analytics.pairing).
_VEHICLE, _TABLE_HOURS, _LIVE_FROM, _LIVE_TO = "$5::text", "$6::timestamptz[]", "$7::timestamptz[]", "$8::timestamptz[]"
_ROW_COLUMNS: Final = "vehicle_id, hour, total_dc_kwh, total_ac_kwh, matched, unmatched"


class EfficiencyRow(NamedTuple):
    """One vehicle's UTC hour; the sums count matched readings only.

    A NamedTuple, not a frozen dataclass: a fleet-day is 240,000 of them, and a
    frozen dataclass sets each field through ``object.__setattr__`` (3x slower)."""

    vehicle_id: str
    hour: datetime
    total_dc_kwh: float
    total_ac_kwh: float
    efficiency: float | None  # None when total_ac_kwh is 0
    matched: int
    unmatched: int


class HourSummary(NamedTuple):
    """One UTC hour over the selected vehicles: ``vehicles`` had readings in it."""

    hour: datetime
    vehicles: int
    total_dc_kwh: float
    total_ac_kwh: float
    efficiency: float | None  # None when total_ac_kwh is 0
    matched: int
    unmatched: int


class UnmappedVehicleError(BridgeError):
    """The vehicle has no row in ``vehicle_meter_mapping``, so no meter to pair with."""

    def __init__(self, vehicle_id: str) -> None:
        super().__init__(f"vehicle {vehicle_id!r} has no meter mapping")
        self.vehicle_id = vehicle_id


def _efficiency(dc: float, ac: float) -> float | None:
    return dc / ac if ac else None


def hour_pieces(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut at UTC hour boundaries, oldest first."""
    pieces = []
    lo = start
    while lo < end:
        hi = min(floor_hour(lo) + HOUR, end)
        pieces.append((lo, hi))
        lo = hi
    return pieces


def joined(pieces: Sequence[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Adjacent pieces merged: each vehicle's readings of a run of hours are then read
    in one go, however many hours the run has (an empty month costs one index probe
    per vehicle, not one per vehicle and hour)."""
    runs: list[tuple[datetime, datetime]] = []
    for lo, hi in pieces:
        if runs and runs[-1][1] == lo:
            runs[-1] = (runs[-1][0], hi)
        else:
            runs.append((lo, hi))
    return runs


# --- SQL --------------------------------------------------------------------------


def coverage_sql(schema: str) -> str:
    """The rolled-up hours in [$1, $2] (hour starts), with their sums, whether any
    invalidation still covers them, and whether one covers them for every vehicle."""
    return f"""
SELECT f.hour, f.vehicles, f.total_dc_kwh, f.total_ac_kwh, f.matched, f.unmatched,
       d.hour IS NOT NULL AS dirty, coalesce(d.every_vehicle, false) AS every_vehicle
FROM {qualified(schema, "efficiency_fleet_hourly")} f
LEFT JOIN LATERAL (
    SELECT f.hour, bool_or(m.every_vehicle) AS every_vehicle
    FROM {qualified(schema, "efficiency_invalidations")} m
    WHERE m.hour_from <= f.hour AND m.hour_to > f.hour
    HAVING count(*) > 0
) AS d ON true
WHERE f.hour >= $1 AND f.hour <= $2"""


def rows_sql(schema: str) -> str:
    """Per-vehicle rows over [$1, $2): for the selected vehicles ($5: one id, or NULL for
    every mapped vehicle), clean rows of the rolled-up hours $6, and live rows for the
    pieces [$7[i], $8[i]) and for the vehicle-hours of $6 that are not clean."""
    invalidations = qualified(schema, "efficiency_invalidations")
    live_targets = f"""
        SELECT s.vehicle_id, s.meter_id, piece.lo, piece.hi
        FROM unnest({_LIVE_FROM}, {_LIVE_TO}) AS piece (lo, hi) CROSS JOIN selected s
        UNION ALL
        SELECT d.vehicle_id, d.meter_id, d.hour, d.hour + interval '1 hour' FROM dirty d
        UNION ALL
        SELECT st.vehicle_id, st.mapped_meter, st.hour, st.hour + interval '1 hour' FROM stored st
        WHERE st.meter_id <> st.mapped_meter AND NOT EXISTS
              (SELECT 1 FROM dirty d WHERE d.hour = st.hour AND d.vehicle_id = st.vehicle_id)"""
    return f"""
WITH selected AS (
    SELECT vehicle_id, meter_id FROM {qualified(schema, "vehicle_meter_mapping")}
    WHERE {_VEHICLE} IS NULL OR vehicle_id = {_VEHICLE}
), stored AS (
    SELECT e.vehicle_id, e.hour, e.meter_id, s.meter_id AS mapped_meter,
           e.total_dc_kwh, e.total_ac_kwh, e.matched, e.unmatched
    FROM {qualified(schema, "efficiency_hourly")} e JOIN selected s ON s.vehicle_id = e.vehicle_id
    WHERE e.hour = ANY({_TABLE_HOURS}) AND e.hour >= $1 AND e.hour < $2
), marks AS (
    SELECT h.hour, m.vehicle_ids, m.meter_ids
    FROM unnest({_TABLE_HOURS}) AS h (hour)
    JOIN {invalidations} m ON m.hour_from <= h.hour AND m.hour_to > h.hour
), dirty AS (
    SELECT mk.hour, s.vehicle_id, s.meter_id
    FROM marks mk CROSS JOIN LATERAL unnest(mk.vehicle_ids) AS u (vehicle_id) JOIN selected s USING (vehicle_id)
    UNION
    SELECT mk.hour, s.vehicle_id, s.meter_id
    FROM marks mk CROSS JOIN LATERAL unnest(mk.meter_ids) AS u (meter_id) JOIN selected s USING (meter_id)
)
SELECT {_ROW_COLUMNS} FROM stored st
WHERE st.meter_id = st.mapped_meter
  AND NOT EXISTS (SELECT 1 FROM dirty d WHERE d.hour = st.hour AND d.vehicle_id = st.vehicle_id)
UNION ALL
SELECT {_ROW_COLUMNS} FROM ({hour_rows_sql(schema, live_targets)}) AS live"""


def report_sql(schema: str) -> str:
    return f'SELECT * FROM ({rows_sql(schema)}) AS vehicle_rows\nORDER BY hour DESC, vehicle_id COLLATE "C"'


def summary_sql(schema: str) -> str:
    return f"SELECT hour, {FLEET_SUMS}\nFROM ({rows_sql(schema)}) AS vehicle_rows\nGROUP BY hour"


# --- queries ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _one_snapshot(conn: Conn) -> AsyncIterator[None]:
    """Every statement inside sees the same committed state (unless the caller's own
    transaction already decides that)."""
    if conn.is_in_transaction():
        yield
        return
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(NO_JIT)
        yield


@dataclasses.dataclass(frozen=True)
class _Split:
    """Which hours of a range come from the roll-up and which are computed live."""

    table_hours: list[datetime]
    live: list[tuple[datetime, datetime]]
    clean_sums: list[asyncpg.Record]  # rolled-up hours no invalidation touches


async def _split(conn: Conn, schema: str, start: datetime, end: datetime, live: bool) -> _Split:
    pieces = hour_pieces(start, end)
    covered: dict[datetime, asyncpg.Record] = {}
    if not live and pieces:
        rows = await conn.fetch(coverage_sql(schema), start, end - HOUR)
        covered = {r["hour"]: r for r in rows if not r["every_vehicle"]}  # else: all of it is live
    return _Split(
        table_hours=sorted(covered),
        live=joined([(lo, hi) for lo, hi in pieces if lo not in covered]),
        clean_sums=[r for r in covered.values() if not r["dirty"]],
    )


def _query_args(
    start: datetime, end: datetime, vehicle_id: str | None, table_hours: Sequence[datetime], split: _Split
) -> tuple[object, ...]:
    return (
        *range_args(start, end),
        vehicle_id,
        list(table_hours),
        [lo for lo, _ in split.live],
        [hi for _, hi in split.live],
    )


async def _rows(
    conn: Conn, schema: str, start: datetime, end: datetime, vehicle_id: str | None, live: bool
) -> list[EfficiencyRow]:
    split = await _split(conn, schema, start, end, live)
    records = await conn.fetch(report_sql(schema), *_query_args(start, end, vehicle_id, split.table_hours, split))
    # Positional: a fleet-day is 240,000 rows, and looking columns up by name doubles the time.
    return [
        EfficiencyRow(vehicle, hour, dc, ac, _efficiency(dc, ac), matched, unmatched)
        for vehicle, hour, dc, ac, matched, unmatched in records
    ]


async def _require_mapping(conn: Conn, schema: str, vehicle_id: str) -> None:
    mapped = await conn.fetchval(
        f"SELECT true FROM {qualified(schema, 'vehicle_meter_mapping')} WHERE vehicle_id = $1", vehicle_id
    )
    if not mapped:
        raise UnmappedVehicleError(vehicle_id)


async def fleet_report(
    conn: Conn, schema: str, start: datetime, end: datetime, *, live: bool = False
) -> list[EfficiencyRow]:
    """Every mapped vehicle over ``[start, end)``, newest hour first, then by vehicle id."""
    check_range(start, end)
    async with _one_snapshot(conn):
        return await _rows(conn, schema, start, end, None, live)


async def vehicle_report(
    conn: Conn, schema: str, vehicle_id: str, start: datetime, end: datetime, *, live: bool = False
) -> list[EfficiencyRow]:
    """One vehicle over ``[start, end)``, newest hour first.

    Raises :class:`UnmappedVehicleError` when the vehicle has no mapping, which
    an empty list (mapped, but no readings in the range) would otherwise hide.
    """
    check_range(start, end)
    async with _one_snapshot(conn):
        await _require_mapping(conn, schema, vehicle_id)
        return await _rows(conn, schema, start, end, vehicle_id, live)


async def hourly_summary(
    conn: Conn,
    schema: str,
    start: datetime,
    end: datetime,
    *,
    vehicle_id: str | None = None,
    live: bool = False,
) -> list[HourSummary]:
    """Per UTC hour over ``[start, end)``, newest first: the sums of the rows
    :func:`fleet_report` (or :func:`vehicle_report` for ``vehicle_id``) gives.

    Over every vehicle, a rolled-up hour that no invalidation touches is one row of
    ``efficiency_fleet_hourly``; the others are summed from vehicle rows, in the
    same order as the roll-up sums them.
    """
    check_range(start, end)
    async with _one_snapshot(conn):
        if vehicle_id is not None:
            await _require_mapping(conn, schema, vehicle_id)
        split = await _split(conn, schema, start, end, live)
        # An hour the fleet row answers: no vehicle rows to read (none to show if it had none).
        answered = [] if vehicle_id is not None else split.clean_sums
        taken = {r["hour"] for r in answered}
        whole = [r for r in answered if r["vehicles"]]
        table_hours = [hour for hour in split.table_hours if hour not in taken]
        computed: list[asyncpg.Record] = []
        if table_hours or split.live:
            computed = await conn.fetch(summary_sql(schema), *_query_args(start, end, vehicle_id, table_hours, split))
    return sorted(
        (
            HourSummary(
                hour=r["hour"],
                vehicles=r["vehicles"],
                total_dc_kwh=r["total_dc_kwh"],
                total_ac_kwh=r["total_ac_kwh"],
                efficiency=_efficiency(r["total_dc_kwh"], r["total_ac_kwh"]),
                matched=r["matched"],
                unmatched=r["unmatched"],
            )
            for r in (*whole, *computed)
        ),
        key=lambda s: s.hour,
        reverse=True,
    )
