"""What a write may change in the roll-up, recorded in the same transaction as the
write, so the report and the roll-up never take a stale hour for a clean one.

A vehicle reading at t can change its vehicle's hour of t. A meter reading at t can
change the pairing of any vehicle reading within ``PAIR_WINDOW`` of it, that is the
hours from t - window to t + window (two hours near an hour boundary), of every
vehicle mapped to that meter. The meter is recorded, not its vehicles: whoever
reads the invalidation resolves the meter through the mapping as it sees it, so a
mapping change racing the write cannot leave a vehicle out. A mapping change
records its vehicles for all hours.

Each batch appends, in its own statement, one row per distinct hour range (usually
one or two) with the device ids as arrays, or, for a large batch within a few
hours, one row saying "every vehicle". Rows are only ever appended by writers, so replicas never
wait for each other here; the roll-up deletes the rows it has worked off
(:mod:`bridge.analytics.rollup`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final

from bridge import clock
from bridge.analytics.pairing import HOUR, PAIR_WINDOW, floor_hour
from bridge.db import Conn, qualified
from bridge.ingest.parse import Reading

__all__ = ["EVERY_VEHICLE_AT", "batch_cte", "every_vehicle_hours", "invalidate_vehicles"]

_WINDOW_SQL: Final = f"interval '{PAIR_WINDOW.total_seconds():g} seconds'"
# A batch of this many readings or more, all within a few hours, invalidates those
# hours for every vehicle instead of naming each device: sending the names cost the
# writer a sixth of its throughput in a backlog drain (docs/benchmarks.md), while
# the roll-up recomputes an hour for most of its vehicles anyway by then.
EVERY_VEHICLE_AT: Final = 500
EVERY_VEHICLE_SPAN: Final = timedelta(hours=3)


def every_vehicle_hours(by_stream: Mapping[str, Sequence[Reading]]) -> tuple[datetime, datetime] | None:
    """The hours ``[from, to)`` a batch invalidates for every vehicle at once, or None
    when its readings are few or spread out (then each device is named)."""
    moments = [r.recorded_at for readings in by_stream.values() for r in readings]
    if len(moments) < EVERY_VEHICLE_AT:
        return None
    first, end = floor_hour(min(moments) - PAIR_WINDOW), floor_hour(max(moments) + PAIR_WINDOW) + HOUR
    return (first, end) if end - first <= EVERY_VEHICLE_SPAN else None


def batch_cte(schema: str, vehicles: str, meters: str, every_from: int, every_to: int, marked_at: int) -> str:
    """The invalidations of a batch, as a data-modifying CTE of the batch's own
    statement (bridge/ingest/store.py): so recorded in the same transaction as the
    readings, without sending the device ids a second time. ``vehicles`` and
    ``meters`` name the statement's CTEs of the batch's readings (columns
    ``vehicle_id``/``meter_id`` and ``recorded_at``); the numbers are the parameters
    holding every_vehicle_hours() (NULLs when None) and the time of recording.
    Duplicates are recorded too: telling them apart would cost the writer more than
    the roll-up loses by recomputing an hour that did not change."""
    table = qualified(schema, "efficiency_invalidations")
    return f"""invalidated AS (
INSERT INTO {table} (hour_from, hour_to, vehicle_ids, meter_ids, every_vehicle, marked_at)
SELECT ${every_from}::timestamptz, ${every_to}::timestamptz, '{{}}', '{{}}', true, ${marked_at}::timestamptz
WHERE ${every_from}::timestamptz IS NOT NULL
UNION ALL
SELECT hour_from, hour_to,
       coalesce(array_agg(DISTINCT device) FILTER (WHERE is_vehicle), '{{}}'),
       coalesce(array_agg(DISTINCT device) FILTER (WHERE NOT is_vehicle), '{{}}'),
       false, ${marked_at}::timestamptz
FROM (
    SELECT date_trunc('hour', recorded_at, 'UTC') AS hour_from,
           date_trunc('hour', recorded_at, 'UTC') + interval '1 hour' AS hour_to,
           vehicle_id AS device, true AS is_vehicle
    FROM {vehicles}
    UNION ALL
    SELECT date_trunc('hour', recorded_at - {_WINDOW_SQL}, 'UTC'),
           date_trunc('hour', recorded_at + {_WINDOW_SQL}, 'UTC') + interval '1 hour',
           meter_id, false
    FROM {meters}
) AS touched
WHERE ${every_from}::timestamptz IS NULL
GROUP BY hour_from, hour_to)"""


async def invalidate_vehicles(conn: Conn, schema: str, vehicle_ids: Collection[str]) -> None:
    """Every hour of these vehicles (their meter changed, or they are newly mapped)."""
    if not vehicle_ids:
        return
    await conn.execute(
        f"INSERT INTO {qualified(schema, 'efficiency_invalidations')}"
        " (hour_from, hour_to, vehicle_ids, meter_ids, marked_at)"
        " VALUES ('-infinity', 'infinity', $1, '{}', $2)",
        sorted(vehicle_ids),
        clock.now(),
    )
