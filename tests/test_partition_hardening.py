"""The SECURITY DEFINER partition functions: a caller's
temporary tables cannot shadow the schema's, and the retention pass cannot drop
the newest days whatever cutoff it is given.

The retention floor is measured on the database server's clock (a guard cannot take
its caller's word for the date), so these tests take "today" from the server too,
and hand the same day to the maintenance pass they run."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import asyncpg
import pytest

from bridge.schema.migrate import available_migrations
from bridge.schema.partitions import ensure_partitions, partition_name, run_maintenance
from bridge.streams import HISTORY_TABLES

pytestmark = [pytest.mark.integration, pytest.mark.clock]

FUNCTIONS = ("ensure_day_partition", "drop_day_partitions_before")


async def server_today(db: asyncpg.Connection) -> date:
    today: date = await db.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")
    return today


async def partition_exists(db: asyncpg.Connection, schema: str, name: str) -> bool:
    return bool(await db.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{schema}"."{name}"'))


async def drop_before(db: asyncpg.Connection, schema: str, cutoff: date) -> list[str]:
    return [r[0] for r in await db.fetch(f'SELECT * FROM "{schema}".drop_day_partitions_before($1)', cutoff)]


async def test_functions_search_the_schema_then_pg_temp(db: asyncpg.Connection, schema: str) -> None:
    """Both functions pin search_path to the schema with pg_temp last."""
    rows = await db.fetch(
        "SELECT proname, proconfig FROM pg_proc WHERE pronamespace = $1::regnamespace AND proname = ANY($2)",
        schema,
        list(FUNCTIONS),
    )
    assert {r["proname"]: r["proconfig"] for r in rows} == {
        name: [f"search_path={schema}, pg_temp"] for name in FUNCTIONS
    }


async def test_a_temporary_table_cannot_pass_for_a_missing_partition(db: asyncpg.Connection, schema: str) -> None:
    """A caller's temporary table named like a missing day partition does not stop
    ensure_day_partition from making the real one (0001 reported it as made)."""
    day = await server_today(db) + timedelta(days=30)
    name = partition_name("meter_telemetry_history", day)
    await db.execute(f'CREATE TEMPORARY TABLE "{name}" (x integer)')

    assert await db.fetchval(f'SELECT "{schema}".ensure_day_partition($1, $2)', "meter_telemetry_history", day)
    assert await partition_exists(db, schema, name)


async def test_a_temporary_table_is_not_dropped_in_place_of_a_partition(db: asyncpg.Connection, schema: str) -> None:
    """The retention pass drops the schema's partition, not a caller's temporary
    table of the same name."""
    day = await server_today(db) - timedelta(days=500)
    await ensure_partitions(db, schema, "meter_telemetry_history", [day])
    name = partition_name("meter_telemetry_history", day)
    await db.execute(f'CREATE TEMPORARY TABLE "{name}" (x integer)')

    assert name in await drop_before(db, schema, day + timedelta(days=1))
    assert not await partition_exists(db, schema, name)
    assert await db.fetchval(f'SELECT count(*) FROM pg_temp."{name}"') == 0  # still there


async def make_days(db: asyncpg.Connection, schema: str, days: list[date]) -> None:
    for table in HISTORY_TABLES:
        await ensure_partitions(db, schema, table, days)


async def days_present(db: asyncpg.Connection, schema: str, days: list[date]) -> set[date]:
    return {day for day in days if await partition_exists(db, schema, partition_name(HISTORY_TABLES[0], day))}


async def test_retention_refuses_to_drop_a_day_inside_the_floor(db: asyncpg.Connection, schema: str) -> None:
    """A pass that would drop today or one of the 2 days before it (the server's UTC
    day) is refused as insufficient_privilege and drops nothing, not even the older
    days it would have taken along; a cutoff that reaches only older days drops them."""
    today = await server_today(db)
    days = [today - timedelta(days=n) for n in range(5)] + [today + timedelta(days=1)]
    await make_days(db, schema, days)

    for cutoff in (today + timedelta(days=365), today, today - timedelta(days=1)):
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as refused:
            await drop_before(db, schema, cutoff)
        assert refused.value.sqlstate == "42501"
        assert await days_present(db, schema, days) == set(days)

    dropped = await drop_before(db, schema, today - timedelta(days=2))
    assert sorted(dropped) == sorted(
        partition_name(t, today - timedelta(days=n)) for t in HISTORY_TABLES for n in (3, 4)
    )
    assert await days_present(db, schema, days) == set(days[:3] + days[5:])


async def test_a_cutoff_past_the_floor_with_nothing_to_drop_is_not_an_error(
    db: asyncpg.Connection, schema: str
) -> None:
    """The floor judges what would be dropped: a cutoff later than the floor's, in a
    schema whose partitions are all older or all newer than the floor's days, passes
    (a bridge whose clock is ahead of the database's, or a test's moved clock, does
    not break maintenance for nothing)."""
    today = await server_today(db)
    await make_days(db, schema, [today + timedelta(days=400)])
    assert await drop_before(db, schema, today + timedelta(days=300)) == []


async def test_a_floor_set_on_the_function_wins_over_the_session(db: asyncpg.Connection, schema: str) -> None:
    """A floor set with ALTER FUNCTION holds even when the caller sets a lower one
    in its session; a session value below the 2-day minimum changes nothing."""
    today = await server_today(db)
    days = [today - timedelta(days=n) for n in (2, 3, 10, 30, 31)]
    await make_days(db, schema, days)
    await db.execute("SET fleet_bridge.min_retention_days = '0'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await drop_before(db, schema, today)

    await db.execute(
        f"ALTER FUNCTION \"{schema}\".drop_day_partitions_before(date) SET fleet_bridge.min_retention_days = '30'"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await drop_before(db, schema, today - timedelta(days=9))
    assert await days_present(db, schema, days) == set(days)
    await drop_before(db, schema, today - timedelta(days=30))
    assert await days_present(db, schema, days) == set(days[:4])
    await db.execute("RESET fleet_bridge.min_retention_days")


async def test_the_shortest_retention_setting_still_passes_the_floor(db: asyncpg.Connection, schema: str) -> None:
    """The maintenance pass with the smallest retention the settings allow (2 days)
    drops the older days and keeps the recent ones."""
    today = await server_today(db)
    old, kept = today - timedelta(days=4), today - timedelta(days=2)
    await make_days(db, schema, [old, kept])

    now = datetime.combine(today, time(12), UTC)
    result = await run_maintenance(db, schema, premake_days=1, retention_days=2, now=now)

    assert set(result.dropped) == {partition_name(t, old) for t in HISTORY_TABLES}
    for table in HISTORY_TABLES:
        assert await partition_exists(db, schema, partition_name(table, kept))


@pytest.mark.parametrize("version", [2, 3])
async def test_upgrading_keeps_a_floor_an_operator_set(pg_dsn: str, schema: str, version: int) -> None:
    """Migrations 0002 and 0003 replace the function (which resets its settings) and
    put back a floor set on it with ALTER FUNCTION before the upgrade."""
    function = f'"{schema}".drop_day_partitions_before(date)'
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        for migration in available_migrations():
            if migration.version == version:
                await conn.execute(f"ALTER FUNCTION {function} SET fleet_bridge.min_retention_days = '45'")
            if migration.version <= version:
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}"')
                    await conn.execute(migration.sql)

        config = await conn.fetchval("SELECT proconfig FROM pg_proc WHERE oid = $1::regprocedure", function)
        assert "fleet_bridge.min_retention_days=45" in config
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def test_only_day_partitioned_tables_get_day_partitions(db: asyncpg.Connection, schema: str) -> None:
    """ensure_day_partition makes days of the schema's partitioned tables (history and
    roll-up) and refuses any other table, so the ingest role cannot create tables."""
    day = date(2026, 11, 27)
    for table in ("efficiency_hourly", "efficiency_fleet_hourly"):
        assert await db.fetchval(f'SELECT "{schema}".ensure_day_partition($1, $2)', table, day)
        assert await partition_exists(db, schema, partition_name(table, day))
    with pytest.raises(asyncpg.RaiseError):
        await db.fetchval(f'SELECT "{schema}".ensure_day_partition($1, $2)', "vehicle_meter_mapping", day)
    assert not await partition_exists(db, schema, partition_name("vehicle_meter_mapping", day))
