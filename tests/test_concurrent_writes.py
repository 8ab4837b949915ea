"""Writers of several replicas on one database at once, driven directly (each
``Writer`` on its own connection pool, as each daemon has): opposite row orders
never deadlock and never let an older reading win, and partitions for a new day
are made once however many writers need them at the same moment."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from bridge import clock
from bridge.ingest.batch import Batch
from bridge.ingest.parse import Reading
from bridge.ingest.store import PgStore
from bridge.ingest.writer import Writer
from bridge.metrics import Health, Metrics
from bridge.schema.partitions import ensure_partitions, partition_name, run_maintenance
from bridge.streams import HISTORY_TABLES, METER, VEHICLE, StreamSpec

pytestmark = [pytest.mark.integration, pytest.mark.clock]

DEVICES = 1000  # of each stream
ROUNDS = 20
Key = tuple[str, str]  # (stream, device id)


def reading(spec: StreamSpec, device: str, ts: datetime, kwh: float) -> Reading:
    values = (kwh, None, None, None)
    return Reading(spec, device, ts, ts, values, None, f"{spec.name}/{device}", b"{}")


@pytest.fixture
async def writers(pg_dsn: str, schema: str) -> AsyncIterator[Callable[[], Awaitable[Writer]]]:
    """``await make()``: a writer with a connection pool of its own, as each replica has."""
    pools: list[asyncpg.Pool] = []

    async def make() -> Writer:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
        pools.append(pool)
        return Writer(PgStore(pool, schema), Metrics(), Health())

    yield make
    for pool in pools:
        await pool.close()


def transient_errors(writer: Writer) -> float:
    value = writer._metrics.registry.get_sample_value("fleet_bridge_db_errors_total", {"kind": "transient"})
    return value or 0.0


async def test_one_batch_keeps_the_newest_reading_per_device_and_the_first_of_a_tie(
    db: asyncpg.Connection, schema: str, writers: Callable[[], Awaitable[Writer]]
) -> None:
    """Within a batch, out of order and with two readings of one device at the same
    time: history holds each (device, ts) once, the first one; current state holds
    each device's newest reading, the same row history kept; an older batch after
    that changes history only."""
    t0 = clock.now().replace(microsecond=0) - timedelta(hours=1)
    at = [t0 + timedelta(minutes=m) for m in range(10)]
    writer = await writers()
    batch = Batch(readings=[
        reading(METER, "B", at[2], 1.0), reading(METER, "A", at[5], 1.0), reading(METER, "B", at[9], 1.0),
        reading(METER, "A", at[3], 1.0), reading(METER, "B", at[9], 2.0),
    ])  # fmt: skip
    outcome = await writer.write(batch)
    assert (outcome.inserted["meter"], outcome.duplicates["meter"]) == (4, 1)
    history = await db.fetch(
        f'SELECT meter_id, recorded_at, kwh_consumed_ac FROM "{schema}".meter_telemetry_history ORDER BY 1, 2'
    )
    assert [tuple(r) for r in history] == [("A", at[3], 1.0), ("A", at[5], 1.0), ("B", at[2], 1.0), ("B", at[9], 1.0)]
    current = f'SELECT meter_id, recorded_at, kwh_consumed_ac FROM "{schema}".meter_current_state ORDER BY 1'
    assert [tuple(r) for r in await db.fetch(current)] == [("A", at[5], 1.0), ("B", at[9], 1.0)]

    await writer.write(Batch(readings=[reading(METER, "A", at[0], 5.0)]))
    assert [tuple(r) for r in await db.fetch(current)] == [("A", at[5], 1.0), ("B", at[9], 1.0)]

    # Many ties at once (a small sort may happen to keep input order; a large one need not).
    ties = [
        reading(METER, f"T{d:04d}", at[1] + timedelta(seconds=d % 7), kwh) for d in range(2000) for kwh in (3.0, 4.0)
    ]
    await writer.write(Batch(readings=ties))
    kept = await db.fetch(
        f'SELECT c.kwh_consumed_ac AS current, h.kwh_consumed_ac AS history FROM "{schema}".meter_current_state c'
        f' JOIN "{schema}".meter_telemetry_history h USING (meter_id, recorded_at) WHERE meter_id LIKE $1',
        "T%",
    )
    assert len(kept) == 2000
    assert {(r["current"], r["history"]) for r in kept} == {(3.0, 3.0)}


@pytest.mark.slow
async def test_writers_in_opposite_orders_never_deadlock_and_the_newest_reading_wins(
    db: asyncpg.Connection, schema: str, writers: Callable[[], Awaitable[Writer]]
) -> None:
    """Two writers, 20 rounds: in each both write the same 1,000 meters and 1,000
    vehicles at the same moment, one with the devices in ascending order, the other
    descending. Each device gets one reading from each writer (a random one of the
    two is newer), one reading both writers carry (a duplicate racing itself), and
    from the second writer a late reading of the round before. No write needs a
    retry (PostgreSQL detected no deadlock), history holds each distinct reading
    once, and current state is every device's newest reading with its values."""
    rng = random.Random(9)
    first, second = await writers(), await writers()
    base = clock.now().replace(microsecond=0) - timedelta(hours=1)
    devices = [(spec, f"{spec.name.upper()}-{d:05d}") for spec in (METER, VEHICLE) for d in range(DEVICES)]
    distinct: dict[Key, dict[datetime, float]] = {}

    def add(batch: Batch, spec: StreamSpec, device: str, ts: datetime) -> None:
        kwh = distinct.setdefault((spec.name, device), {}).setdefault(ts, round(rng.uniform(0, 2), 3))
        batch.readings.append(reading(spec, device, ts, kwh))

    with capture_logs() as logs:
        for n in range(ROUNDS):
            mine, theirs = Batch(), Batch()
            start = base + timedelta(minutes=n)
            for spec, device in devices:
                newer, older = (mine, theirs) if rng.random() < 0.5 else (theirs, mine)
                add(newer, spec, device, start + timedelta(seconds=20))
                add(older, spec, device, start + timedelta(seconds=10))
                for batch in (mine, theirs):
                    add(batch, spec, device, start)
                if n:
                    add(theirs, spec, device, start - timedelta(seconds=45))
            theirs.readings.reverse()
            await asyncio.gather(first.write(mine), second.write(theirs))

    assert [e for e in logs if e["event"] == "db_write_retry"] == []
    assert transient_errors(first) == transient_errors(second) == 0
    for spec in (METER, VEHICLE):
        history = await db.fetch(
            f"SELECT {spec.id_field} AS id, recorded_at, {spec.energy_field} AS kwh"
            f' FROM "{schema}".{spec.name}_telemetry_history'
        )
        assert len(history) == sum(len(v) for (s, _), v in distinct.items() if s == spec.name)
        assert {(r["id"], r["recorded_at"]): r["kwh"] for r in history} == {
            (device, ts): kwh for (s, device), v in distinct.items() if s == spec.name for ts, kwh in v.items()
        }
        current = await db.fetch(
            f"SELECT {spec.id_field} AS id, recorded_at, {spec.energy_field} AS kwh"
            f' FROM "{schema}".{spec.name}_current_state'
        )
        newest = {device: max(v.items()) for (s, device), v in distinct.items() if s == spec.name}
        assert {r["id"]: (r["recorded_at"], r["kwh"]) for r in current} == newest


async def test_partitions_for_a_new_day_are_made_once_by_concurrent_callers(
    pg_dsn: str, db: asyncpg.Connection, schema: str
) -> None:
    """Six connections (replicas) ask for the same missing day's partitions at the
    same moment while two maintenance passes run: none fails, and each partition is
    created by exactly one caller."""
    day = clock.now().date() - timedelta(days=30)
    conns = [await asyncpg.connect(pg_dsn) for _ in range(8)]

    async def both_tables(conn: asyncpg.Connection) -> list[str]:
        return [partition_name(t, d) for t in HISTORY_TABLES for d in await ensure_partitions(conn, schema, t, [day])]

    try:
        made, _ = await asyncio.gather(
            asyncio.gather(*(both_tables(c) for c in conns[:6])),
            asyncio.gather(*(run_maintenance(c, schema, premake_days=3, retention_days=400) for c in conns[6:])),
        )
    finally:
        for c in conns:
            await c.close()
    created = [name for names in made for name in names]
    assert sorted(created) == sorted(partition_name(t, day) for t in HISTORY_TABLES)


async def test_writers_needing_the_same_missing_day_all_commit_without_retry(
    db: asyncpg.Connection, schema: str, writers: Callable[[], Awaitable[Writer]]
) -> None:
    """Four writers each bring readings of the same 200 meters and vehicles for a
    day that has no partition yet, at the same moment: each makes or finds the
    partitions, commits at the first attempt, and every reading is stored."""
    day_start = clock.now().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=20)
    batches = []
    for w in range(4):
        batch = Batch()
        for d in range(200):
            ts = day_start + timedelta(minutes=w, seconds=d)
            batch.readings += [reading(METER, f"MTR-{d:05d}", ts, 1.0), reading(VEHICLE, f"EV-{d:05d}", ts, 0.9)]
        batches.append(batch)
    team = [await writers() for _ in batches]
    with capture_logs() as logs:
        await asyncio.gather(*(w.write(b) for w, b in zip(team, batches, strict=True)))
    assert [e for e in logs if e["event"] == "db_write_retry"] == []
    for spec in (METER, VEHICLE):
        stored = await db.fetchval(
            f'SELECT count(*) FROM "{schema}".{partition_name(spec.name + "_telemetry_history", day_start.date())}'
        )
        assert stored == 4 * 200
