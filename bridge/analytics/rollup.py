"""The roll-up: ``efficiency_hourly`` (one row per vehicle and hour) and
``efficiency_fleet_hourly`` (the hour's sums) recomputed where invalidations say
something may have changed, by the computation the live report runs
(:mod:`bridge.analytics.pairing`).

One pass:

1. reads the invalidations it will work off: those whose hours are all settled
   (ended ``settle`` ago), or, for a requested range, those inside it;
2. plans per hour: every vehicle for an hour not rolled up yet (or requested),
   else only the vehicles named, directly or through their meter, plus those whose
   mapping changed (all their rolled-up hours);
3. recomputes each hour in slices, one transaction each (in parallel on as many
   connections as it is given), then that hour's fleet row;
4. deletes the invalidations it read.

A reading committed after step 1 came with an invalidation of its own, which the
pass does not delete: the next pass sees it. Until step 4 the report treats the
hours as dirty and computes them live, so it is exact while a pass runs, and after
a pass that died half-way (the next one does the work again). Passes are
serialized by an advisory lock per schema; ingest never waits for one (writers
only append invalidations, which a pass never locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from bridge.analytics.pairing import FLEET_SUMS, HOUR, NO_JIT, floor_hour, hour_rows_sql, range_args
from bridge.db import Conn, qualified
from bridge.ingest.parse import oldest_accepted_day
from bridge.schema.partitions import ROLLUP_TABLES, ensure_partitions

__all__ = [
    "HourWork",
    "Invalidation",
    "PassResult",
    "hours_between",
    "plan_work",
    "retained_from",
    "rollup_lag",
    "rollup_lock",
    "run_pass",
    "unmatched_ratio",
]

LOCK_PREFIX: Final = "fleet_bridge.rollup:"


def retained_from(now: datetime, retention_days: int) -> datetime:
    """The first hour retention keeps: older readings are refused and their days
    dropped, so there is nothing to roll up before it."""
    return datetime.combine(oldest_accepted_day(now, retention_days), datetime.min.time(), UTC)


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """The UTC hours that overlap ``[start, end)``, oldest first."""
    hour, hours = floor_hour(start), []
    while hour < end:
        hours.append(hour)
        hour += HOUR
    return hours


@dataclasses.dataclass(frozen=True)
class Invalidation:
    """Invalidations merged per hour range: ``hours`` None means every hour (a mapping
    change); ``every_vehicle`` that the hours changed for any vehicle."""

    hours: tuple[datetime, datetime] | None
    vehicles: frozenset[str]
    meters: frozenset[str]
    every_vehicle: bool = False


@dataclasses.dataclass
class HourWork:
    """What one hour needs: every vehicle, or those named and those of the meters named."""

    hour: datetime
    everyone: bool = False
    vehicles: set[str] = dataclasses.field(default_factory=set)
    meters: set[str] = dataclasses.field(default_factory=set)


def plan_work(
    invalidations: Iterable[Invalidation],
    rolled_up: Collection[datetime],
    *,
    requested: Iterable[datetime] = (),
    keep_from: datetime,
) -> list[HourWork]:
    """The hours to recompute, oldest first (pure).

    ``rolled_up`` are the hours the roll-up holds that a mapping change reaches (all
    it holds when there is one) and those the invalidations name; an hour it does
    not hold, or invalidated for every vehicle, is computed for every vehicle. Hours
    before ``keep_from`` (past retention) are left alone.
    """
    work: dict[datetime, HourWork] = {hour: HourWork(hour, everyone=True) for hour in requested}
    remapped: set[str] = set()
    for invalidation in invalidations:
        if invalidation.hours is None:
            remapped |= invalidation.vehicles
            continue
        for hour in hours_between(*invalidation.hours):
            item = work.setdefault(hour, HourWork(hour))
            item.everyone = item.everyone or invalidation.every_vehicle
            item.vehicles |= invalidation.vehicles
            item.meters |= invalidation.meters
    if remapped:
        for hour in rolled_up:
            work.setdefault(hour, HourWork(hour)).vehicles |= remapped
    for item in work.values():
        item.everyone = item.everyone or item.hour not in rolled_up
    return [work[hour] for hour in sorted(work) if hour >= keep_from]


@dataclasses.dataclass
class PassResult:
    """What one pass did: per hour recomputed, the vehicle-hours written."""

    vehicle_hours: dict[datetime, int] = dataclasses.field(default_factory=dict)
    invalidations: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.vehicle_hours.values())


# --- SQL --------------------------------------------------------------------------


def _every_hour(column: str) -> str:
    return f"CASE WHEN hour_from = '-infinity' THEN NULL ELSE {column} END"


def pending_sql(schema: str, *, requested: bool) -> str:
    """Ids of the invalidations a pass works off: all hours settled ($1 = the first
    unsettled hour) and mapping changes; or, for a requested range [$1, $2), those
    inside it."""
    where = "hour_from >= $1 AND hour_to <= $2" if requested else "hour_to <= $1 OR hour_from = '-infinity'"
    return f"SELECT id FROM {qualified(schema, 'efficiency_invalidations')} WHERE {where}"


def merged_sql(schema: str) -> str:
    """The invalidations $1 merged per hour range, device ids once each."""
    invalidations = qualified(schema, "efficiency_invalidations")
    return f"""
SELECT {_every_hour("hour_from")} AS hour_from, {_every_hour("hour_to")} AS hour_to,
       bool_or(every_vehicle) AS every_vehicle,
       coalesce(array_agg(DISTINCT device) FILTER (WHERE is_vehicle), '{{}}') AS vehicles,
       coalesce(array_agg(DISTINCT device) FILTER (WHERE NOT is_vehicle), '{{}}') AS meters
FROM (
    SELECT hour_from, hour_to, unnest(vehicle_ids) AS device, true AS is_vehicle, false AS every_vehicle
    FROM {invalidations} WHERE id = ANY($1::bigint[])
    UNION ALL
    SELECT hour_from, hour_to, unnest(meter_ids), false, false FROM {invalidations} WHERE id = ANY($1::bigint[])
    UNION ALL
    SELECT hour_from, hour_to, NULL, NULL, true FROM {invalidations} WHERE id = ANY($1::bigint[]) AND every_vehicle
) AS named
GROUP BY hour_from, hour_to"""


def upsert_sql(schema: str) -> str:
    """Recompute one hour [$1, $2) (with $3/$4 its window-widened bounds) for the
    mapped vehicles named in $5 or mapped to a meter in $6 ($5 NULL: all of them),
    those of slice $8 of $7; $9 is computed_at."""
    targets = f"""
        SELECT vehicle_id, meter_id, $1::timestamptz, $2::timestamptz
        FROM {qualified(schema, "vehicle_meter_mapping")}
        WHERE ($5::text[] IS NULL OR vehicle_id = ANY($5::text[]) OR meter_id = ANY($6::text[]))
          AND ($7::integer = 1 OR (hashtext(vehicle_id) & 2147483647) % $7::integer = $8::integer)"""
    return f"""
INSERT INTO {qualified(schema, "efficiency_hourly")} AS e
    (vehicle_id, hour, meter_id, total_dc_kwh, total_ac_kwh, matched, unmatched, computed_at)
SELECT r.vehicle_id, r.hour, r.meter_id, r.total_dc_kwh, r.total_ac_kwh, r.matched, r.unmatched, $9
FROM ({hour_rows_sql(schema, targets)}) AS r
ORDER BY r.vehicle_id
ON CONFLICT (hour, vehicle_id) DO UPDATE SET
    meter_id = excluded.meter_id, total_dc_kwh = excluded.total_dc_kwh, total_ac_kwh = excluded.total_ac_kwh,
    matched = excluded.matched, unmatched = excluded.unmatched, computed_at = excluded.computed_at"""


def fleet_row_sql(schema: str) -> str:
    """Hour $1's fleet row from its vehicle rows still paired with their mapped meter;
    $2 is computed_at. Marks the hour rolled up."""
    return f"""
INSERT INTO {qualified(schema, "efficiency_fleet_hourly")} AS f
    (hour, vehicles, total_dc_kwh, total_ac_kwh, matched, unmatched, computed_at)
SELECT $1, {FLEET_SUMS}, $2
FROM (
    SELECT e.vehicle_id, e.total_dc_kwh, e.total_ac_kwh, e.matched, e.unmatched
    FROM {qualified(schema, "efficiency_hourly")} e
    JOIN {qualified(schema, "vehicle_meter_mapping")} map ON map.vehicle_id = e.vehicle_id AND map.meter_id = e.meter_id
    WHERE e.hour = $1
) AS vehicle_rows
ON CONFLICT (hour) DO UPDATE SET
    vehicles = excluded.vehicles, total_dc_kwh = excluded.total_dc_kwh, total_ac_kwh = excluded.total_ac_kwh,
    matched = excluded.matched, unmatched = excluded.unmatched, computed_at = excluded.computed_at"""


def waiting_since_sql(schema: str) -> str:
    """When the longest-waiting settled invalidation became due: its hours settled
    ($2 after their end) or it was recorded, whichever is later; $1 is the first
    unsettled hour. NULL when none waits."""
    return f"""
SELECT min(CASE WHEN hour_to = 'infinity' THEN marked_at ELSE greatest(marked_at, hour_to + $2::interval) END)
FROM {qualified(schema, "efficiency_invalidations")}
WHERE hour_to <= $1 OR hour_to = 'infinity'"""


def newest_hour_sql(schema: str) -> str:
    return f"SELECT matched, unmatched FROM {qualified(schema, 'efficiency_fleet_hourly')} ORDER BY hour DESC LIMIT 1"


# --- IO ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def rollup_lock(conn: Conn, schema: str, *, wait: Callable[[], None] | None) -> AsyncIterator[bool]:
    """Hold the schema's roll-up lock (session-level, on ``conn``) inside the block.

    Yields False at once if another pass holds it and ``wait`` is None; otherwise
    calls ``wait`` (to say so) and waits for it. If the block fails, the lock is
    left for the caller to release by closing ``conn`` (the connection may be
    unusable, or the task cancelled)."""
    key = LOCK_PREFIX + schema
    got = await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key)
    if not got and wait is not None:
        wait()
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
        got = True
    yield bool(got)
    if got:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def _read_invalidations(
    conn: Conn, schema: str, bounds: tuple[datetime, ...], *, requested: bool
) -> tuple[list[int], list[Invalidation]]:
    ids = [r["id"] for r in await conn.fetch(pending_sql(schema, requested=requested), *bounds)]
    if not ids:
        return [], []
    merged = [
        Invalidation(
            hours=None if r["hour_from"] is None else (r["hour_from"], r["hour_to"]),
            vehicles=frozenset(r["vehicles"]),
            meters=frozenset(r["meters"]),
            every_vehicle=r["every_vehicle"],
        )
        for r in await conn.fetch(merged_sql(schema), ids)
    ]
    return ids, merged


async def _rolled_up(conn: Conn, schema: str, invalidations: Sequence[Invalidation]) -> set[datetime]:
    """The hours the roll-up holds among those the invalidations name; all of them
    when a mapping changed (settled or not: a requested range may hold any hour)."""
    fleet = qualified(schema, "efficiency_fleet_hourly")
    if any(i.hours is None for i in invalidations):
        rows = await conn.fetch(f"SELECT hour FROM {fleet}")
    else:
        named = sorted({hour for i in invalidations if i.hours for hour in hours_between(*i.hours)})
        rows = await conn.fetch(f"SELECT hour FROM {fleet} WHERE hour = ANY($1::timestamptz[])", named)
    return {r["hour"] for r in rows}


async def _slice(conn: Conn, sql: str, *args: object) -> int:
    """One slice of an hour in its own transaction; the vehicle-hours it wrote."""
    async with conn.transaction():
        await conn.execute(NO_JIT)
        status = await conn.execute(sql, *args)
    return int(status.rsplit(" ", 1)[1])


async def _recompute(conns: Sequence[Conn], schema: str, item: HourWork, computed_at: datetime) -> int:
    """One hour's vehicle rows (an hour for every vehicle split over the connections),
    then its fleet row; returns the vehicle-hours written."""
    sql = upsert_sql(schema)
    hour = range_args(item.hour, item.hour + HOUR)
    if item.everyone:
        parts = len(conns)
        written = await asyncio.gather(
            *(_slice(conn, sql, *hour, None, None, parts, part, computed_at) for part, conn in enumerate(conns))
        )
    else:
        named = sorted(item.vehicles), sorted(item.meters)
        written = [await _slice(conns[0], sql, *hour, *named, 1, 0, computed_at)]
    await conns[0].execute(fleet_row_sql(schema), item.hour, computed_at)
    return sum(written)


async def rollup_lag(conn: Conn, schema: str, *, now: datetime, settle: timedelta) -> float:
    """Seconds the longest-waiting dirty settled hour has waited for a pass; 0 when none."""
    since = await conn.fetchval(waiting_since_sql(schema), floor_hour(now - settle), settle)
    return 0.0 if since is None else max(0.0, (now - since).total_seconds())


async def unmatched_ratio(conn: Conn, schema: str) -> float:
    """Unmatched vehicle readings over all of them in the newest rolled-up hour (0 without one)."""
    row = await conn.fetchrow(newest_hour_sql(schema))
    readings = 0 if row is None else row["matched"] + row["unmatched"]
    return row["unmatched"] / readings if row is not None and readings else 0.0


async def run_pass(
    conns: Sequence[Conn],
    schema: str,
    *,
    now: datetime,
    settle: timedelta,
    keep_from: datetime,
    requested: tuple[datetime, datetime] | None = None,
    progress: Callable[[int, int, datetime], None] | None = None,
) -> PassResult:
    """One roll-up pass (the caller holds :func:`rollup_lock` on ``conns[0]``).

    Without ``requested``, the hours invalidated whose end is ``settle`` before
    ``now``; with it, every hour overlapping that range too. Hours before
    ``keep_from`` (past retention) are skipped. ``progress(done, total, hour)`` is
    called after each hour."""
    started = time.monotonic()
    main = conns[0]
    if requested is None:
        hours: list[datetime] = []
        bounds: tuple[datetime, ...] = (floor_hour(now - settle),)
    else:
        hours = hours_between(*requested)
        bounds = (hours[0], hours[-1] + HOUR) if hours else requested
    ids, invalidations = await _read_invalidations(main, schema, bounds, requested=requested is not None)
    rolled_up = await _rolled_up(main, schema, invalidations)
    work = plan_work(invalidations, rolled_up, requested=hours, keep_from=keep_from)
    result = PassResult(invalidations=len(ids))
    days_made: set[datetime] = set()
    for done, item in enumerate(work, start=1):
        day = item.hour.replace(hour=0)
        if day not in days_made:
            for table in ROLLUP_TABLES:
                await ensure_partitions(main, schema, table, [day.date()])
            days_made.add(day)
        result.vehicle_hours[item.hour] = await _recompute(conns, schema, item, now)
        if progress is not None:
            progress(done, len(work), item.hour)
    if ids:
        await main.execute(f"DELETE FROM {qualified(schema, 'efficiency_invalidations')} WHERE id = ANY($1)", ids)
    result.seconds = time.monotonic() - started
    return result
