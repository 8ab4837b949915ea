"""Database errors are told apart by SQLSTATE and the exception's fields, not by
their message, which follows the server's lc_messages: against a PostgreSQL that
speaks German, a day partition dropped under the running daemon is made again and
its readings are stored, not set aside as db_error rejects."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import timedelta

import asyncpg
import pytest

from bridge import clock
from bridge.schema.migrate import apply_migrations
from bridge.schema.partitions import partition_name
from tests.support.fleet_data import count
from tests.support.helpers import BridgeProcess, meter_payload, publish_async, wait_for
from tests.support.services import PostgresCluster, find_postgres_bindir

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.clock]

LOCALE = "de_DE.UTF-8"
# .ci/run generates the locale and sets this, so that there the test cannot skip.
REQUIRED = os.environ.get("FLEET_TEST_REQUIRE_LOCALE") == LOCALE


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (FLEET_TEST_REQUIRE_LOCALE={LOCALE})")
    pytest.skip(f"{reason}: generate it with locale-gen to run this test")


@pytest.fixture(scope="module")
def german_dsn() -> Iterator[str]:
    """A private PostgreSQL started with lc_messages=de_DE.UTF-8 (a server started
    before the locale was generated cannot switch to it)."""
    installed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout.split()
    if not any(name.lower().replace("-", "") == "de_de.utf8" for name in installed):
        unavailable(f"the {LOCALE} locale is not installed")
    bindir = find_postgres_bindir()
    if bindir is None:
        unavailable("no initdb and pg_ctl to start a private PostgreSQL")
        return
    cluster = PostgresCluster(bindir, {"lc_messages": LOCALE})
    try:
        cluster.start()
        yield cluster.dsn
    finally:
        cluster.close()


async def test_a_dropped_partition_is_made_again_whatever_the_server_language(
    german_dsn: str, schema: str, prefix: str, broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:  # fmt: skip
    """Readings for a day whose partition was dropped while the daemon ran (its cache
    says the day exists) fail with SQLSTATE 23514 and a German message; the writer
    treats that as a stale cache, makes the day again and stores them."""
    conn = await asyncpg.connect(german_dsn)
    try:
        assert await conn.fetchval("SHOW lc_messages") == LOCALE
        await apply_migrations(conn, schema)
        day = clock.now() - timedelta(hours=1)
        bridge = start_bridge(FLEET_BRIDGE_DB_DSN=german_dsn)
        await bridge.wait_ready()
        await publish_async(*broker, [(f"{prefix}meter/MTR-1", meter_payload(day))])

        async def stored(rows: int) -> bool:
            return await count(conn, schema, "meter_telemetry_history") == rows

        await wait_for(lambda: stored(1), timeout=60, what="the first reading")
        part = partition_name("meter_telemetry_history", day.date())
        await conn.execute(f'DROP TABLE "{schema}"."{part}"')
        # Guard of the setting, not of the product: the server really answers in German.
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await conn.execute(
                f'INSERT INTO "{schema}".meter_telemetry_history (meter_id, recorded_at, received_at, kwh_consumed_ac)'
                " VALUES ('X', $1, $1, 1)",
                day,
            )
        assert "no partition" not in str(refused.value)

        await publish_async(*broker, [(f"{prefix}meter/MTR-{n}", meter_payload(day)) for n in range(2, 6)])
        await wait_for(lambda: stored(4), timeout=60, what="the readings after the drop")
        assert await count(conn, schema, "ingest_rejects") == 0
        assert bridge.metric("fleet_bridge_db_errors_total", kind="transient") >= 1
        assert bridge.metric("fleet_bridge_db_errors_total", kind="permanent") == 0
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
