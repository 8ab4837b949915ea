"""The SECURITY DEFINER partition functions: a caller's
temporary tables cannot shadow the schema's, and the retention pass cannot drop
the newest days whatever cutoff it is given."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from bridge.schema.partitions import HISTORY_TABLES, ensure_partitions, partition_name, run_maintenance

pytestmark = pytest.mark.integration

FUNCTIONS = ("ensure_day_partition", "drop_day_partitions_before")


def utc_today() -> date:
    return datetime.now(UTC).date()


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
    day = utc_today() + timedelta(days=30)
    name = partition_name("meter_telemetry_history", day)
    await db.execute(f'CREATE TEMPORARY TABLE "{name}" (x integer)')

    assert await db.fetchval(f'SELECT "{schema}".ensure_day_partition($1, $2)', "meter_telemetry_history", day)
    assert await partition_exists(db, schema, name)


async def test_a_temporary_table_is_not_dropped_in_place_of_a_partition(db: asyncpg.Connection, schema: str) -> None:
    """The retention pass drops the schema's partition, not a caller's temporary
    table of the same name."""
    day = utc_today() - timedelta(days=500)
    await ensure_partitions(db, schema, "meter_telemetry_history", [day])
    name = partition_name("meter_telemetry_history", day)
    await db.execute(f'CREATE TEMPORARY TABLE "{name}" (x integer)')

    assert name in await drop_before(db, schema, day + timedelta(days=1))
    assert not await partition_exists(db, schema, name)
    assert await db.fetchval(f'SELECT count(*) FROM pg_temp."{name}"') == 0  # still there


async def test_retention_refuses_a_cutoff_inside_the_floor(db: asyncpg.Connection, schema: str) -> None:
    """A cutoff later than today - 2 (UTC) is refused and drops nothing; today - 2 is allowed."""
    today = utc_today()
    before = {t: await partition_exists(db, schema, partition_name(t, today)) for t in HISTORY_TABLES}
    assert all(before.values())

    for cutoff in (today + timedelta(days=365), today, today - timedelta(days=1)):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="retention floor keeps 2 days"):
            await drop_before(db, schema, cutoff)
    assert await drop_before(db, schema, today - timedelta(days=2)) == []
    for table in HISTORY_TABLES:
        assert await partition_exists(db, schema, partition_name(table, today))


async def test_a_floor_set_on_the_function_wins_over_the_session(db: asyncpg.Connection, schema: str) -> None:
    """A floor set with ALTER FUNCTION holds even when the caller sets a lower one
    in its session; a session value below the 2-day minimum changes nothing."""
    today = utc_today()
    await db.execute("SET fleet_bridge.min_retention_days = '0'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="keeps 2 days"):
        await drop_before(db, schema, today)

    await db.execute(
        f"ALTER FUNCTION \"{schema}\".drop_day_partitions_before(date) SET fleet_bridge.min_retention_days = '30'"
    )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="keeps 30 days"):
        await drop_before(db, schema, today - timedelta(days=10))
    assert await drop_before(db, schema, today - timedelta(days=30)) == []
    await db.execute("RESET fleet_bridge.min_retention_days")


async def test_the_shortest_retention_setting_still_passes_the_floor(db: asyncpg.Connection, schema: str) -> None:
    """The maintenance pass with the smallest retention the settings allow (2 days)
    drops the older days and keeps the recent ones."""
    today = utc_today()
    old, kept = today - timedelta(days=4), today - timedelta(days=2)
    for table in HISTORY_TABLES:
        await ensure_partitions(db, schema, table, [old, kept])

    result = await run_maintenance(db, schema, premake_days=1, retention_days=2)

    assert set(result.dropped) == {partition_name(t, old) for t in HISTORY_TABLES}
    for table in HISTORY_TABLES:
        assert await partition_exists(db, schema, partition_name(table, kept))
