"""`fleet-bridge migrate`: the contract's schema, idempotent, partitions premade."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import asyncpg
import pytest

from bridge import clock
from bridge.commands.cli import main
from bridge.ingest.parse import RejectReason
from bridge.schema.partitions import partition_name

pytestmark = [pytest.mark.integration, pytest.mark.clock]

SNAPSHOT = """
SELECT 'column' AS kind, table_name || '.' || column_name || ':' || data_type AS what
  FROM information_schema.columns WHERE table_schema = $1
UNION ALL
SELECT 'index', indexname || ':' || indexdef FROM pg_indexes WHERE schemaname = $1
UNION ALL
SELECT 'function', p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1
UNION ALL
SELECT 'migration', version::text FROM {schema}.schema_migrations
ORDER BY 1, 2
"""


async def snapshot(conn: asyncpg.Connection, schema: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(SNAPSHOT.format(schema=f'"{schema}"'), schema)
    return [(r["kind"], r["what"]) for r in rows]


async def test_migrate_twice_changes_nothing(
    pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second run applies nothing and leaves the schema byte-for-byte equal."""
    monkeypatch.setenv("FLEET_BRIDGE_DB_DSN", pg_dsn)
    monkeypatch.setenv("FLEET_BRIDGE_DB_SCHEMA", schema)
    monkeypatch.setenv("FLEET_BRIDGE_PARTITIONS_PREMAKE_DAYS", "3")
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await run_cli(["migrate"]) == 0
        first = await snapshot(conn, schema)
        assert await run_cli(["migrate"]) == 0
        assert await snapshot(conn, schema) == first
        out = capsys.readouterr().out
        assert "0001_schema" in out
        assert "none (schema is current)" in out

        tables = {
            r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        }
        contract = {"meter_current_state", "vehicle_current_state", "vehicle_meter_mapping", "ingest_rejects",
                    "schema_migrations"}  # fmt: skip
        assert contract <= tables
        today = clock.now().date()
        for table in ("meter_telemetry_history", "vehicle_telemetry_history"):
            made = {partition_name(table, today + timedelta(days=n)) for n in range(4)}
            assert made <= tables
            assert partition_name(table, today + timedelta(days=4)) not in tables
            assert partition_name(table, today - timedelta(days=1)) not in tables
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def run_cli(argv: list[str]) -> int:
    """Run the synchronous CLI (which owns its event loop) off this test's loop."""
    return await asyncio.to_thread(main, argv)


async def test_history_primary_keys_and_no_default_partition(db: asyncpg.Connection, schema: str) -> None:
    """History PKs are (device id, recorded_at) and there is no default partition."""
    for table, key in (("meter_telemetry_history", "meter_id"), ("vehicle_telemetry_history", "vehicle_id")):
        columns = await db.fetch(
            """SELECT a.attname FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey[0:i.indnkeyatts - 1])
               WHERE i.indrelid = $1::regclass AND i.indisprimary""",
            f'"{schema}".{table}',
        )
        assert sorted(r["attname"] for r in columns) == sorted([key, "recorded_at"])
        default = await db.fetchval(
            "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = $1::regclass AND partdefid <> 0",
            f'"{schema}".{table}',
        )
        assert default == 0


async def test_rejects_check_constraint_allows_exactly_the_reject_reasons(db: asyncpg.Connection, schema: str) -> None:
    """The CHECK on ingest_rejects.reason, as the migrated schema has it, lists exactly
    bridge.ingest.parse.RejectReason: a code missing there would fail every batch
    holding such a reject, a code only there could never be counted."""
    definition = await db.fetchval(
        "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)"
        " WHERE c.conrelid = $1::regclass AND c.contype = 'c' AND a.attname = 'reason'",
        f'"{schema}".ingest_rejects',
    )
    assert set(re.findall(r"'(\w+)'::text", definition)) == set(RejectReason)
