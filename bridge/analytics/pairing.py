"""The efficiency computation itself (docs/contract.md section 6), as SQL: the live report and
the roll-up both run it, so a rolled-up hour and a live one cannot differ.

Each vehicle reading is paired with the ONE reading of its mapped meter nearest in
time within ``PAIR_WINDOW`` (a tie goes to the earlier meter reading). The work is
cut into *targets*: one vehicle, its meter and a time range ``[lo, hi)``. Per
target, the meter's readings of the range (widened by the window) are read once
from its key index into two sorted arrays, and each vehicle reading finds its
neighbours in them by binary search (``width_bucket``): the nearer of the reading
before and the one after, if within the window. The rows are then summed per UTC
hour. The alternatives
measured against it (a probe of the meter index per vehicle reading, a hash join
on time buckets) were slower: docs/benchmarks.md.

Sums run in reading-time order (``sum(... ORDER BY recorded_at)``): floating-point
addition is not associative, so the order is fixed to make every computation of
an hour give the same bits whatever plan the server picks.

Parameters $1..$4 are the whole request's range: $1 from, $2 to (vehicle side),
$3 from - window, $4 to + window (meter side). Passed as values rather than SQL
arithmetic, they stay plain constants for the partition pruner, so only the
range's partitions are touched.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from bridge.db import qualified

__all__ = ["FLEET_SUMS", "HOUR", "NO_JIT", "PAIR_WINDOW", "check_range", "floor_hour", "hour_rows_sql", "range_args"]

# A meter reading pairs with a vehicle reading at most this far away (inclusive).
PAIR_WINDOW: Final = timedelta(seconds=5)
HOUR: Final = timedelta(hours=1)
_WINDOW_SQL: Final = f"interval '{PAIR_WINDOW.total_seconds():g} seconds'"

# Run in each transaction of these queries. The server decides on JIT compilation
# from row estimates, which the per-target nested loops overstate many times over:
# it compiled for longer than a report read from the roll-up then ran.
NO_JIT: Final = "SET LOCAL jit = off"

# One hour's sums over per-vehicle rows (columns vehicle_id, total_dc_kwh,
# total_ac_kwh, matched, unmatched): the roll-up's fleet row and a summary
# computed from vehicle rows use this same text, adding in vehicle id order.
FLEET_SUMS: Final = """count(*)::integer AS vehicles,
       coalesce(sum(total_dc_kwh ORDER BY vehicle_id COLLATE "C"), 0) AS total_dc_kwh,
       coalesce(sum(total_ac_kwh ORDER BY vehicle_id COLLATE "C"), 0) AS total_ac_kwh,
       coalesce(sum(matched), 0)::bigint AS matched,
       coalesce(sum(unmatched), 0)::bigint AS unmatched"""


def floor_hour(moment: datetime) -> datetime:
    """The start of the UTC hour ``moment`` is in."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def check_range(start: datetime, end: datetime) -> None:
    """ValueError unless ``[start, end)`` is a range of aware times (maybe empty)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("report times must be timezone-aware (a naive time is ambiguous)")
    if start > end:
        raise ValueError(f"empty range: from {start.isoformat()} is after to {end.isoformat()}")


def range_args(start: datetime, end: datetime) -> tuple[datetime, datetime, datetime, datetime]:
    """Parameters $1..$4 for ``[start, end)``, after checking the range."""
    check_range(start, end)
    return start, end, start - PAIR_WINDOW, end + PAIR_WINDOW


def hour_rows_sql(schema: str, targets: str) -> str:
    """One row per target and UTC hour with vehicle readings: ``vehicle_id, meter_id,
    hour, total_dc_kwh, total_ac_kwh, matched, unmatched``.

    ``targets`` is a query returning ``(vehicle_id, meter_id, lo, hi)`` with
    ``[lo, hi)`` inside [$1, $2); targets of one vehicle must not overlap.
    """
    meter = qualified(schema, "meter_telemetry_history")
    vehicle = qualified(schema, "vehicle_telemetry_history")
    return f"""
SELECT t.vehicle_id, t.meter_id, r.hour, r.total_dc_kwh, r.total_ac_kwh, r.matched, r.unmatched
FROM ({targets}) AS t (vehicle_id, meter_id, lo, hi)
CROSS JOIN LATERAL (
    SELECT array_agg(mt.recorded_at ORDER BY mt.recorded_at) AS at,
           array_agg(mt.kwh_consumed_ac ORDER BY mt.recorded_at) AS kwh
    FROM {meter} mt
    WHERE mt.meter_id = t.meter_id
      AND mt.recorded_at >= t.lo - {_WINDOW_SQL} AND mt.recorded_at <= t.hi + {_WINDOW_SQL}
      AND mt.recorded_at >= $3 AND mt.recorded_at <= $4
) AS m
CROSS JOIN LATERAL (
    SELECT date_trunc('hour', p.at, 'UTC') AS hour,
           coalesce(sum(p.dc ORDER BY p.at) FILTER (WHERE p.ac IS NOT NULL), 0) AS total_dc_kwh,
           coalesce(sum(p.ac ORDER BY p.at), 0) AS total_ac_kwh,
           count(p.ac)::integer AS matched,
           (count(*) - count(p.ac))::integer AS unmatched
    FROM (
        -- m.at[b.i] is the last meter reading at or before the vehicle reading (i = 0:
        -- none), m.at[b.i + 1] the first after it (NULL past the end).
        SELECT v.recorded_at AS at, v.kwh_delivered_dc AS dc,
               CASE WHEN v.recorded_at - m.at[b.i] <= {_WINDOW_SQL}
                         AND (b.i = cardinality(m.at) OR v.recorded_at - m.at[b.i] <= m.at[b.i + 1] - v.recorded_at)
                    THEN m.kwh[b.i]
                    WHEN m.at[b.i + 1] - v.recorded_at <= {_WINDOW_SQL} THEN m.kwh[b.i + 1]
               END AS ac
        FROM {vehicle} v
        CROSS JOIN LATERAL (SELECT coalesce(width_bucket(v.recorded_at, m.at), 0) AS i) AS b
        WHERE v.vehicle_id = t.vehicle_id AND v.recorded_at >= t.lo AND v.recorded_at < t.hi
          AND v.recorded_at >= $1 AND v.recorded_at < $2
        OFFSET 0  -- a fence: the pairing above is computed once, not once per aggregate below
    ) AS p
    GROUP BY 1
) AS r"""
