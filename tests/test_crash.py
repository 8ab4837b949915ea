"""Acknowledgement after COMMIT, proven by killing the daemon: a reading the broker
accepted is stored exactly once however often the bridge dies mid-stream."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import asyncpg
import pytest

from tests.support.fleet_data import fleet_messages, publish_paced, wait_stored_exactly
from tests.support.helpers import BOTH_READERS, BridgeProcess, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.fault,
    pytest.mark.slow,
    pytest.mark.parametrize("reader", BOTH_READERS, indirect=True),
]


@pytest.mark.parametrize("round_", range(2))
async def test_kill_9_twice_loses_and_duplicates_nothing(
    round_: int,
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """kill -9 of the daemon twice while 20,000 readings flow, then a restart: every
    reading is in history exactly once (run twice: the race is different each time)."""
    messages, truth = fleet_messages(prefix, devices=500, readings_each=20, seed=round_)
    small_batches = {"FLEET_BRIDGE_BATCH_MAX_ROWS": "200"}
    bridge = start_bridge(**small_batches)
    await bridge.wait_ready()
    publisher = threading.Thread(target=publish_paced, args=(*broker, messages, 20, 0.25))
    publisher.start()

    async def some_rows() -> bool:
        return bool(await db.fetchval(f'SELECT count(*) FROM "{schema}".meter_telemetry_history'))

    await wait_for(some_rows, timeout=60, what="the first commits")
    for _ in range(2):
        await asyncio.sleep(0.7)
        bridge.kill()
        bridge = start_bridge(**small_batches)
        await bridge.wait_ready()
    await asyncio.to_thread(publisher.join)

    await wait_stored_exactly(db, schema, truth, timeout=180, after="after the kills")
