"""A database far away: with 5 ms added each way between the bridge and
PostgreSQL (a managed service in another zone), overlapped commits still store
every reading exactly once and acknowledge in order. No timing is asserted here;
bench/ingest.py --latency measures the throughput."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest

from tests.support.fleet_data import count, fleet_messages, wait_stored_exactly, with_faults
from tests.support.helpers import BridgeProcess, publish_async
from tests.support.tcp_proxy import TcpProxy, through_proxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ONE_WAY_DELAY_S = 0.005


async def test_readings_are_stored_exactly_once_over_a_slow_database_link(
    pg_dsn: str, db: asyncpg.Connection, schema: str, prefix: str, broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:  # fmt: skip
    """10,000 readings with 5% duplicates and 5% out of order, four batches
    committing at once through a link that delays every byte 5 ms each way: each
    distinct reading is stored once and each device's current state is its newest."""
    messages, truth = fleet_messages(prefix, devices=500, readings_each=10, seed=12)
    async with TcpProxy("127.0.0.1", 5432, delay_s=ONE_WAY_DELAY_S) as proxy:
        bridge = start_bridge(
            FLEET_BRIDGE_DB_DSN=through_proxy(pg_dsn, proxy),
            FLEET_BRIDGE_DB_COMMITS_IN_FLIGHT="4",
            FLEET_BRIDGE_DB_POOL_MAX="6",
            FLEET_BRIDGE_BATCH_MAX_ROWS="500",
        )
        await bridge.wait_ready()
        await publish_async(*broker, with_faults(messages, 0.05))
        await wait_stored_exactly(db, schema, truth, timeout=120, after="through the slow link")
    assert await count(db, schema, "ingest_rejects") == 0
