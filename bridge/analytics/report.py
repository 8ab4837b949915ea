"""The charging-efficiency report (docs/contract.md section 6): read-only SQL, typed rows.

Each vehicle reading is paired with the ONE reading of its mapped meter nearest
in time within ``PAIR_WINDOW`` (a tie goes to the earlier meter reading). The
pairing is a LATERAL ``LIMIT 1`` probe per vehicle reading on the meter table's
``(meter_id, recorded_at)`` key index, which INCLUDEs the kWh column, so both
sides are read from the key indexes alone. The probe is bounded twice: by the
per-reading window (runtime partition pruning, per probe) and by constants
derived from the requested range (pruning when the plan is made or started), so
only the range's partitions, widened by the window at both ends, are touched.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Final

import asyncpg

from bridge.db import Conn, qualified
from bridge.errors import BridgeError

__all__ = [
    "PAIR_WINDOW",
    "EfficiencyRow",
    "UnmappedVehicleError",
    "fleet_report",
    "report_args",
    "report_sql",
    "vehicle_report",
]

# A meter reading pairs with a vehicle reading at most this far away (inclusive).
PAIR_WINDOW: Final = timedelta(seconds=5)


@dataclasses.dataclass(frozen=True, slots=True)
class EfficiencyRow:
    """One vehicle's UTC hour; the sums count matched readings only."""

    vehicle_id: str
    hour: datetime
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


def report_sql(schema: str, *, one_vehicle: bool) -> str:
    """The report query. Parameters: $1 from, $2 to (the vehicle side's range),
    $3 from - window, $4 to + window (the meter side's range), and $5 the vehicle
    id when ``one_vehicle``. Passing the widened bounds as values rather than as
    SQL arithmetic keeps them plain constants for the partition pruner."""
    vehicle_filter = "WHERE map.vehicle_id = $5" if one_vehicle else ""
    window = f"interval '{PAIR_WINDOW.total_seconds():g} seconds'"
    return f"""
SELECT p.vehicle_id, p.hour,
       coalesce(sum(p.dc) FILTER (WHERE p.ac IS NOT NULL), 0) AS total_dc_kwh,
       coalesce(sum(p.ac), 0) AS total_ac_kwh,
       sum(p.dc) FILTER (WHERE p.ac IS NOT NULL) / nullif(sum(p.ac), 0) AS efficiency,
       count(p.ac) AS matched,
       count(*) - count(p.ac) AS unmatched
FROM (
    SELECT v.vehicle_id, date_trunc('hour', v.recorded_at, 'UTC') AS hour,
           v.kwh_delivered_dc AS dc, m.kwh_consumed_ac AS ac
    FROM {qualified(schema, "vehicle_meter_mapping")} map
    JOIN {qualified(schema, "vehicle_telemetry_history")} v
      ON v.vehicle_id = map.vehicle_id AND v.recorded_at >= $1 AND v.recorded_at < $2
    LEFT JOIN LATERAL (
        SELECT mt.kwh_consumed_ac
        FROM {qualified(schema, "meter_telemetry_history")} mt
        WHERE mt.meter_id = map.meter_id
          AND mt.recorded_at >= $3 AND mt.recorded_at <= $4
          AND mt.recorded_at >= v.recorded_at - {window}
          AND mt.recorded_at <= v.recorded_at + {window}
        ORDER BY abs(extract(epoch FROM mt.recorded_at - v.recorded_at)), mt.recorded_at
        LIMIT 1
    ) m ON true
    {vehicle_filter}
) p
GROUP BY p.vehicle_id, p.hour
ORDER BY p.hour DESC, p.vehicle_id"""


def report_args(start: datetime, end: datetime) -> tuple[datetime, datetime, datetime, datetime]:
    """The range parameters of :func:`report_sql`, after checking the range."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("report times must be timezone-aware (a naive time is ambiguous)")
    if start > end:
        raise ValueError(f"empty range: from {start.isoformat()} is after to {end.isoformat()}")
    return start, end, start - PAIR_WINDOW, end + PAIR_WINDOW


def _rows(records: list[asyncpg.Record]) -> list[EfficiencyRow]:
    return [
        EfficiencyRow(
            vehicle_id=r["vehicle_id"],
            hour=r["hour"],
            total_dc_kwh=r["total_dc_kwh"],
            total_ac_kwh=r["total_ac_kwh"],
            efficiency=r["efficiency"],
            matched=r["matched"],
            unmatched=r["unmatched"],
        )
        for r in records
    ]


async def fleet_report(conn: Conn, schema: str, start: datetime, end: datetime) -> list[EfficiencyRow]:
    """Every mapped vehicle over ``[start, end)``, newest hour first, then by vehicle id."""
    records = await conn.fetch(report_sql(schema, one_vehicle=False), *report_args(start, end))
    return _rows(records)


async def vehicle_report(
    conn: Conn, schema: str, vehicle_id: str, start: datetime, end: datetime
) -> list[EfficiencyRow]:
    """One vehicle over ``[start, end)``, newest hour first.

    Raises :class:`UnmappedVehicleError` when the vehicle has no mapping, which
    an empty list (mapped, but no readings in the range) would otherwise hide.
    """
    mapped = await conn.fetchval(
        f"SELECT true FROM {qualified(schema, 'vehicle_meter_mapping')} WHERE vehicle_id = $1", vehicle_id
    )
    if not mapped:
        raise UnmappedVehicleError(vehicle_id)
    records = await conn.fetch(report_sql(schema, one_vehicle=True), *report_args(start, end), vehicle_id)
    return _rows(records)
