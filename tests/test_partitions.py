"""Partition lifecycle: premake exactly the expected days, retention drops only what
is older than the window, and concurrent maintenance passes both succeed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from bridge import clock
from bridge.commands.cli import main
from bridge.schema.partitions import (
    DAY_PARTITIONED_TABLES,
    drop_cutoff,
    ensure_partitions,
    partition_name,
    run_maintenance,
)

pytestmark = [pytest.mark.integration, pytest.mark.clock]

NOW = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)


async def partitions(db: asyncpg.Connection, schema: str, table: str) -> set[str]:
    rows = await db.fetch(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = $1::regclass""",
        f'"{schema}".{table}',
    )
    return {r["relname"] for r in rows}


async def test_premake_then_retention(db: asyncpg.Connection, schema: str) -> None:
    """Premake makes today..today+N; retention drops days before the cutoff, keeps the
    rest: the same days of history and of the roll-up."""
    old_days = [NOW.date() - timedelta(days=n) for n in (3, 10, 11, 12)]
    for table in DAY_PARTITIONED_TABLES:
        await ensure_partitions(db, schema, table, old_days)
    await db.execute(
        f'INSERT INTO "{schema}".meter_telemetry_history (meter_id, recorded_at, received_at, kwh_consumed_ac)'
        " VALUES ('M', $1, $1, 1)",
        datetime.combine(old_days[1], datetime.min.time(), UTC),
    )
    before = {t: await partitions(db, schema, t) for t in DAY_PARTITIONED_TABLES}

    result = await run_maintenance(db, schema, premake_days=2, retention_days=9, now=NOW)

    cutoff = drop_cutoff(NOW.date(), 9)
    assert cutoff == NOW.date() - timedelta(days=10)
    premade = [NOW.date() + timedelta(days=n) for n in range(3)]
    for table in DAY_PARTITIONED_TABLES:
        after = await partitions(db, schema, table)
        expected_dropped = {partition_name(table, d) for d in old_days if d < cutoff}
        assert expected_dropped == {partition_name(table, NOW.date() - timedelta(days=n)) for n in (11, 12)}
        assert expected_dropped <= set(result.dropped)
        assert not (after & expected_dropped)
        assert {partition_name(table, d) for d in premade} <= after
        assert partition_name(table, NOW.date() + timedelta(days=3)) not in after
        kept = (before[table] - expected_dropped) | {partition_name(table, d) for d in premade}
        assert after == kept
    # The day at the cutoff itself stays, with its row.
    assert await db.fetchval(f'SELECT count(*) FROM "{schema}".meter_telemetry_history') == 1


async def test_second_pass_is_a_no_op(db: asyncpg.Connection, schema: str) -> None:
    """Maintenance is idempotent."""
    await run_maintenance(db, schema, premake_days=3, retention_days=30, now=NOW)
    again = await run_maintenance(db, schema, premake_days=3, retention_days=30, now=NOW)
    assert (again.created, again.dropped) == ([], [])


async def test_two_concurrent_passes_both_succeed(pg_dsn: str, db: asyncpg.Connection, schema: str) -> None:
    """Two processes' passes at once (as two replicas would) both succeed; the days
    are created once between them."""
    for table in DAY_PARTITIONED_TABLES:
        await ensure_partitions(db, schema, table, [NOW.date() - timedelta(days=40)])
    conns = [await asyncpg.connect(pg_dsn) for _ in range(2)]
    try:
        results = await asyncio.gather(
            *(run_maintenance(c, schema, premake_days=5, retention_days=30, now=NOW) for c in conns)
        )
    finally:
        for c in conns:
            await c.close()
    created = [name for r in results for name in r.created]
    assert len(created) == len(set(created))
    dropped = [name for r in results for name in r.dropped]
    assert sorted(dropped) == sorted(partition_name(t, NOW.date() - timedelta(days=40)) for t in DAY_PARTITIONED_TABLES)
    for table in DAY_PARTITIONED_TABLES:
        assert {partition_name(table, NOW.date() + timedelta(days=n)) for n in range(6)} <= await partitions(
            db, schema, table
        )


async def test_partition_command_for_cron(
    pg_dsn: str, db: asyncpg.Connection, schema: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`fleet-bridge partitions` runs one pass and says what it did."""
    monkeypatch.setenv("FLEET_BRIDGE_DB_DSN", pg_dsn)
    monkeypatch.setenv("FLEET_BRIDGE_DB_SCHEMA", schema)
    monkeypatch.setenv("FLEET_BRIDGE_PARTITIONS_PREMAKE_DAYS", "4")
    assert await asyncio.to_thread(main, ["partitions"]) == 0
    out = capsys.readouterr().out
    assert partition_name("meter_telemetry_history", clock.now().date() + timedelta(days=4)) in out
    assert "dropped: none" in out
