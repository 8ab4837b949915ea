"""The roll-up (bridge/analytics/rollup.py) with the real writer and mapping import
against PostgreSQL: whatever arrives in whatever order, and whenever passes run,
the report equals the live query, and after a last pass so does the table."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.analytics import invalidation
from bridge.analytics import rollup as rollup_module
from bridge.analytics.report import fleet_report
from bridge.analytics.rollup import rollup_lag, rollup_lock, run_pass, unmatched_ratio
from bridge.commands.mapping import upsert_mapping
from bridge.ingest.batch import Batch
from bridge.ingest.parse import Reading
from bridge.ingest.store import PgStore
from bridge.ingest.writer import Writer
from bridge.metrics import Health, Metrics
from tests.support.efficiency import assert_report_exact, assert_table_exact, reading

pytestmark = [pytest.mark.integration, pytest.mark.clock]

H10 = datetime(2026, 11, 27, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
WINDOW = (H10 - HOUR, H10 + 4 * HOUR)  # every reading below falls inside
SETTLE = timedelta(minutes=2)
KEEP_FROM = datetime(2026, 1, 1, tzinfo=UTC)
MAPPING = [("EV-1", "MTR-1"), ("EV-2", "MTR-1"), ("EV-3", "MTR-2")]  # EV-4 is unmapped at first
ONE_PAIR = [("meter", "MTR-1"), ("vehicle", "EV-1")]
ALL_TABLES = (
    "meter_telemetry_history", "vehicle_telemetry_history", "meter_current_state", "vehicle_current_state",
    "vehicle_meter_mapping", "efficiency_hourly", "efficiency_fleet_hourly", "efficiency_invalidations",
)  # fmt: skip


@pytest.fixture
async def writer(pg_dsn: str, db: asyncpg.Connection, schema: str) -> AsyncIterator[Writer]:
    """The daemon's writer on a pool of its own, for this test's schema."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        yield Writer(PgStore(pool, schema), Metrics(), Health())
    finally:
        await pool.close()


async def rollup(db: asyncpg.Connection, schema: str, now: datetime, requested: bool = False) -> None:
    async with rollup_lock(db, schema, wait=None) as ours:
        assert ours
        await run_pass(
            [db], schema, now=now, settle=SETTLE, keep_from=KEEP_FROM, requested=WINDOW if requested else None
        )


# --- the property -----------------------------------------------------------------

# Times pile up near hour boundaries and on a few anchors, so that duplicates,
# ties (a meter reading 2 s either side), pairs exactly 5 s apart and pairs that
# straddle an hour are common, not lucky.
ANCHORS = [H10 + timedelta(seconds=s) for s in (0, 1800, 3598, 3600, 7197, 7203, 9000)]
OFFSETS_MS = [-6000, -5001, -5000, -2000, -500, 0, 500, 2000, 5000, 5001, 6000]
moments = st.builds(lambda a, o: a + timedelta(milliseconds=o), st.sampled_from(ANCHORS), st.sampled_from(OFFSETS_MS))
energies = st.one_of(st.sampled_from([0.0, 0.1, 0.2, 0.3, 1 / 3, 1e-9]), st.floats(0, 999, allow_nan=False))
readings = st.builds(
    lambda stream, n, at, kwh: reading(stream, ("MTR-" if stream == "meter" else "EV-") + n, at, kwh),
    st.sampled_from(["meter", "vehicle"]),
    st.sampled_from(["1", "2", "3", "4"]),
    moments,
    energies,
)


@dataclasses.dataclass(frozen=True)
class Write:
    readings: list[Reading]


@dataclasses.dataclass(frozen=True)
class Pass:
    now: datetime  # which hours are settled
    requested: bool  # a --from/--to pass over the whole window


@dataclasses.dataclass(frozen=True)
class Remap:
    vehicle: str
    meter: str


steps = st.lists(
    st.one_of(
        st.builds(Write, st.lists(readings, min_size=1, max_size=10)),
        st.builds(Pass, st.sampled_from([H10 + timedelta(minutes=m) for m in (61, 65, 150, 400)]), st.booleans()),
        st.builds(Remap, st.sampled_from(["EV-1", "EV-3", "EV-4"]), st.sampled_from(["MTR-1", "MTR-2", "MTR-3"])),
    ),
    min_size=1,
    max_size=12,
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps, every_vehicle_at=st.sampled_from([3, invalidation.EVERY_VEHICLE_AT]))
async def test_the_report_is_exact_after_every_step_and_the_table_after_a_last_pass(
    db: asyncpg.Connection,
    schema: str,
    writer: Writer,
    monkeypatch: pytest.MonkeyPatch,
    steps: list[Write | Pass | Remap],
    every_vehicle_at: int,
) -> None:
    """Random readings (duplicates, disorder, ties, exactly 5 s apart, late ones into
    hours already rolled up), mapping changes and passes (settled hours, or a whole
    range) in any order, batches invalidating named devices or (as large ones do)
    every vehicle: after each step the report equals the live query for every
    vehicle and hour, over the window and over a range with partial hours; after a
    last pass the roll-up tables equal it too."""
    monkeypatch.setattr(invalidation, "EVERY_VEHICLE_AT", every_vehicle_at)
    await db.execute("TRUNCATE " + ", ".join(f'"{schema}".{table}' for table in ALL_TABLES))
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)', MAPPING
    )
    partial = (H10 - timedelta(minutes=30, milliseconds=500), H10 + timedelta(hours=2, minutes=45))
    for step in steps:
        if isinstance(step, Write):
            await writer.write(Batch(readings=step.readings))
        elif isinstance(step, Pass):
            await rollup(db, schema, step.now, step.requested)
        else:
            await upsert_mapping(db, schema, [(step.vehicle, step.meter)])
        await assert_report_exact(db, schema, *WINDOW)
        await assert_report_exact(db, schema, *partial)
    await rollup(db, schema, WINDOW[1] + timedelta(hours=1))
    await assert_table_exact(db, schema, *WINDOW)


# --- particular cases -------------------------------------------------------------


async def test_a_meter_reading_near_an_hour_invalidates_both_hours(
    db: asyncpg.Connection, schema: str, writer: Writer
) -> None:
    """A meter reading within 5 s of 11:00, before or after, can pair with vehicle
    readings of 10:xx and of 11:00:0x: its invalidation spans both hours; a vehicle
    reading's spans its own. One batch, one row per distinct range, each device once."""
    await writer.write(
        Batch(
            readings=[
                reading("meter", "MTR-1", H10 + timedelta(minutes=59, seconds=57), 1.0),
                reading("meter", "MTR-3", H10 + timedelta(minutes=60, seconds=2), 1.0),
                reading("meter", "MTR-2", H10 + timedelta(minutes=20), 1.0),
                reading("vehicle", "EV-1", H10 + timedelta(minutes=20), 1.0),
                reading("vehicle", "EV-1", H10 + timedelta(minutes=21), 1.0),
            ]
        )
    )
    rows = await db.fetch(
        f'SELECT hour_from, hour_to, vehicle_ids, meter_ids FROM "{schema}".efficiency_invalidations ORDER BY 1, 2'
    )
    assert [tuple(r) for r in rows] == [
        (H10, H10 + HOUR, ["EV-1"], ["MTR-2"]),
        (H10, H10 + 2 * HOUR, [], ["MTR-1", "MTR-3"]),
    ]


async def test_a_large_batch_within_a_few_hours_invalidates_them_for_every_vehicle(
    db: asyncpg.Connection, schema: str, writer: Writer
) -> None:
    """500 readings or more within three hours (a backlog drains in such batches): one
    row, every vehicle, the hours the readings can reach. Spread wider, the devices
    are named per range as for a small batch."""
    at = H10 + 30 * MINUTE
    many = [reading("vehicle", f"EV-{n}", at + n * SECOND, 0.5) for n in range(invalidation.EVERY_VEHICLE_AT)]
    await writer.write(Batch(readings=many))
    rows = await db.fetch(
        f'SELECT hour_from, hour_to, vehicle_ids, every_vehicle FROM "{schema}".efficiency_invalidations'
    )
    assert [tuple(r) for r in rows] == [(H10, H10 + HOUR, [], True)]

    await db.execute(f'TRUNCATE "{schema}".efficiency_invalidations')
    await writer.write(Batch(readings=[*many[1:], reading("vehicle", "EV-0", at + 5 * HOUR, 0.5)]))
    rows = await db.fetch(
        f'SELECT hour_from, cardinality(vehicle_ids), every_vehicle FROM "{schema}".efficiency_invalidations ORDER BY 1'
    )
    assert [tuple(r) for r in rows] == [(H10, len(many) - 1, False), (H10 + 5 * HOUR, 1, False)]


async def test_a_late_meter_reading_reaches_back_into_a_rolled_up_hour(
    db: asyncpg.Connection, schema: str, writer: Writer
) -> None:
    """A vehicle reading at 10:59:58 is rolled up unmatched; a meter reading at
    11:00:02 arriving later pairs with it: the report is right at once (10:00 is
    dirty, though the meter reading is in 11:00), and the table after a pass."""
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)', MAPPING
    )
    await writer.write(Batch(readings=[reading("vehicle", "EV-1", H10 + HOUR - 2 * SECOND, 0.5)]))
    await rollup(db, schema, H10 + 3 * HOUR)
    await writer.write(Batch(readings=[reading("meter", "MTR-1", H10 + HOUR + 2 * SECOND, 0.6)]))

    await assert_report_exact(db, schema, *WINDOW)
    (row,) = await fleet_report(db, schema, *WINDOW)
    assert (row.hour, row.matched, row.total_ac_kwh) == (H10, 1, 0.6)
    await rollup(db, schema, H10 + 3 * HOUR)
    await assert_table_exact(db, schema, *WINDOW)


async def test_a_pass_leaves_unsettled_hours_and_hours_past_retention(
    db: asyncpg.Connection, schema: str, writer: Writer
) -> None:
    """With readings at 10:00, 11:00 and 12:00, the pass at 12:01 rolls up 10:00 and
    09:00 (the meter reading at 10:00 reaches 5 s back into it), not 11:00, which ended
    less than the settle delay before; invalidations reaching 11:00 or later stay,
    even those that also name 10:00. An hour before keep_from is not rolled
    up, but its invalidation is cleared."""
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)', MAPPING
    )
    old = H10 - timedelta(days=30)
    batch = [reading(s, d, at, 0.5) for at in (old, H10, H10 + HOUR, H10 + 2 * HOUR) for s, d in ONE_PAIR]
    await writer.write(Batch(readings=batch))

    async with rollup_lock(db, schema, wait=None):
        result = await run_pass(
            [db], schema, now=H10 + timedelta(hours=2, minutes=1), settle=SETTLE, keep_from=old + timedelta(days=1)
        )

    assert result.vehicle_hours == {H10 - HOUR: 0, H10: 1}
    left = await db.fetch(f'SELECT hour_from, hour_to FROM "{schema}".efficiency_invalidations ORDER BY 1, 2')
    hours = [H10 + n * HOUR for n in range(4)]
    assert [tuple(r) for r in left] == [
        (hours[0], hours[2]),
        (hours[1], hours[2]),
        (hours[1], hours[3]),
        (hours[2], hours[3]),
    ]
    assert await db.fetchval(f'SELECT count(*) FROM "{schema}".efficiency_fleet_hourly') == 2


async def test_an_hour_rolled_up_for_the_first_time_is_rolled_up_for_every_vehicle(
    db: asyncpg.Connection, schema: str, writer: Writer
) -> None:
    """Readings stored before the upgrade that added the roll-up have no
    invalidations; when one late reading makes the pass take up their hour, the hour
    is computed for every vehicle, not only the one named."""
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)', MAPPING
    )
    await writer.write(Batch(readings=[reading("vehicle", "EV-3", H10 + 10 * MINUTE, 0.5)]))
    await db.execute(f'TRUNCATE "{schema}".efficiency_invalidations')  # as if stored before the upgrade
    await writer.write(Batch(readings=[reading("vehicle", "EV-1", H10 + 20 * MINUTE, 0.5)]))

    await rollup(db, schema, H10 + 3 * HOUR)

    await assert_table_exact(db, schema, *WINDOW)
    assert [r.vehicle_id for r in await fleet_report(db, schema, *WINDOW)] == ["EV-1", "EV-3"]


async def test_a_reading_written_while_a_pass_runs_keeps_its_invalidation(
    db: asyncpg.Connection, schema: str, writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reading committed after a pass has read the invalidations, into an hour the
    pass is recomputing, is not lost: the pass clears only what it read, so the
    report stays exact and the next pass recomputes the hour again."""
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)', MAPPING
    )
    at = H10 + 5 * MINUTE
    await writer.write(
        Batch(readings=[reading("vehicle", "EV-1", at, 0.5), reading("meter", "MTR-1", at + 3 * SECOND, 0.5)])
    )
    recompute = rollup_module._recompute

    async def with_a_late_reading(*args: Any, **kwargs: Any) -> int:
        written = await recompute(*args, **kwargs)
        await writer.write(Batch(readings=[reading("meter", "MTR-1", at - SECOND, 0.75)]))
        return written

    monkeypatch.setattr(rollup_module, "_recompute", with_a_late_reading)
    await rollup(db, schema, H10 + 3 * HOUR)
    monkeypatch.undo()

    await assert_report_exact(db, schema, *WINDOW)
    (row,) = await fleet_report(db, schema, *WINDOW)
    assert row.total_ac_kwh == 0.75  # the nearer meter reading, written during the pass
    await rollup(db, schema, H10 + 3 * HOUR)
    await assert_table_exact(db, schema, *WINDOW)


async def test_a_second_pass_waits_or_skips_while_one_holds_the_lock(
    pg_dsn: str, db: asyncpg.Connection, schema: str
) -> None:
    """The roll-up lock is per schema: a second taker without ``wait`` is told no at
    once; another schema's lock is independent."""
    other = await asyncpg.connect(pg_dsn)
    try:
        async with rollup_lock(db, schema, wait=None) as first:
            async with rollup_lock(other, schema, wait=None) as second:
                assert (first, second) == (True, False)
            async with rollup_lock(other, schema + "_other", wait=None) as elsewhere:
                assert elsewhere
        async with rollup_lock(other, schema, wait=None) as after:
            assert after
    finally:
        await other.close()


async def test_a_report_over_rolled_up_hours_reads_the_table(
    db: asyncpg.Connection, schema: str, writer: Writer
) -> None:
    """Once an hour is rolled up, the report serves its rows from efficiency_hourly:
    changing a stored row (which only a bug could do) shows in the report, proving
    where it came from, while --live still computes from the readings."""
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)', MAPPING
    )
    await writer.write(Batch(readings=[reading(s, d, H10 + timedelta(minutes=5), 0.5) for s, d in ONE_PAIR]))
    await rollup(db, schema, H10 + 3 * HOUR)
    await db.execute(f'UPDATE "{schema}".efficiency_hourly SET total_dc_kwh = 42')

    (served,) = await fleet_report(db, schema, H10, H10 + HOUR)
    (live,) = await fleet_report(db, schema, H10, H10 + HOUR, live=True)
    assert (served.total_dc_kwh, live.total_dc_kwh) == (42, 0.5)


async def test_the_lag_counts_from_when_an_hour_became_due_and_the_ratio_reads_the_newest_hour(
    db: asyncpg.Connection, schema: str, writer: Writer
) -> None:
    """Lag: the longest wait of a dirty settled hour, from its end plus the settle delay
    or from when it was invalidated, whichever is later; 0 when nothing waits. The
    unmatched ratio is that of the newest rolled-up hour."""
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)', MAPPING
    )
    await writer.write(Batch(readings=[reading("vehicle", "EV-1", H10 + 5 * MINUTE, 0.5)]))  # unmatched
    await writer.write(Batch(readings=[reading(s, d, H10 + HOUR + 5 * MINUTE, 0.5) for s, d in ONE_PAIR]))
    await db.execute(f'UPDATE "{schema}".efficiency_invalidations SET marked_at = $1', H10 + 30 * MINUTE)
    now = H10 + 2 * HOUR + 10 * MINUTE  # 10:00 due at 11:02, 11:00 at 12:02

    assert await rollup_lag(db, schema, now=now, settle=SETTLE) == (10 + 60 - 2) * 60
    assert await unmatched_ratio(db, schema) == 0.0
    await rollup(db, schema, now)
    assert await rollup_lag(db, schema, now=now, settle=SETTLE) == 0.0
    assert await unmatched_ratio(db, schema) == 0.0  # 11:00, the newest: one pair, matched
    await db.execute(f'DELETE FROM "{schema}".efficiency_fleet_hourly WHERE hour = $1', H10 + HOUR)
    assert await unmatched_ratio(db, schema) == 1.0  # 10:00: one reading, unmatched
