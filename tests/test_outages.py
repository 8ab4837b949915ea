"""Riding through failures: broker restarts, poison rows, a large backlog in bounded
memory. (Database outages: tests/test_db_outage.py.)"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg
import psutil
import pytest

from bridge import clock
from tests.support.fleet_data import count, fleet_messages, history_total, wait_stored_exactly
from tests.support.helpers import BOTH_READERS, BridgeProcess, meter_payload, publish, publish_async, wait_for
from tests.support.services import MosquittoProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.fault,
    pytest.mark.parametrize("reader", BOTH_READERS, indirect=True),
]


def publish_through_restarts(host: str, port: int, messages: list[tuple[str, bytes]], chunks: int) -> None:
    """Publish chunk by chunk; a chunk the broker did not fully acknowledge is sent again
    once it is back (QoS 1 publishers retry: duplicates are expected and allowed)."""
    size = -(-len(messages) // chunks)
    for start in range(0, len(messages), size):
        deadline = time.monotonic() + 120
        while True:
            try:
                publish(host, port, messages[start : start + size], timeout=20)
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        time.sleep(0.2)


async def test_broker_restarted_twice_while_publishing(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    private_broker: MosquittoProcess,
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """Mosquitto (project config, persistence) restarted twice mid-stream: every reading
    it accepted is stored exactly once, and the bridge reconnected by itself."""
    messages, truth = fleet_messages(prefix, devices=300, readings_each=20, seed=3)
    bridge = start_bridge(FLEET_BRIDGE_MQTT_PORT=str(private_broker.port))
    await bridge.wait_ready()
    publisher = threading.Thread(
        target=publish_through_restarts, args=(private_broker.host, private_broker.port, messages, 30)
    )
    publisher.start()
    for _ in range(2):
        await asyncio.sleep(1.5)
        await asyncio.to_thread(private_broker.restart)
    await asyncio.to_thread(publisher.join)

    await wait_stored_exactly(db, schema, truth, timeout=180, after="after two broker restarts")
    assert bridge.metric("fleet_bridge_mqtt_reconnects_total") >= 2
    assert bridge.metric("fleet_bridge_mqtt_connected") == 1


async def test_constraint_violation_rejects_only_the_bad_row(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """A reading refused by a database CHECK goes to ingest_rejects with its SQLSTATE;
    the rest of its batch is stored and the stream keeps flowing."""
    await db.execute(
        f'ALTER TABLE "{schema}".meter_telemetry_history ADD CONSTRAINT no_666 CHECK (kwh_consumed_ac <> 666)'
    )
    now = clock.now().replace(microsecond=0)
    good = [(f"{prefix}meter/M{n}", meter_payload(now - timedelta(seconds=n), 1.0)) for n in range(1, 200)]
    poison = (f"{prefix}meter/POISON", meter_payload(now, 666.0))
    bridge = start_bridge(FLEET_BRIDGE_BATCH_MAX_DELAY_MS="2000")
    await bridge.wait_ready()
    await publish_async(*broker, [*good[:100], poison, *good[100:]])

    async def settled() -> bool:
        return await count(db, schema, "meter_telemetry_history") == len(good) and (
            await count(db, schema, "ingest_rejects") == 1
        )

    await wait_for(settled, timeout=60, what="good rows stored and the poison row rejected")
    reject = await db.fetchrow(f'SELECT topic, payload, reason, detail FROM "{schema}".ingest_rejects')
    assert reject is not None
    assert (reject["topic"], bytes(reject["payload"]), reject["reason"]) == (poison[0], poison[1], "db_error")
    assert "23514" in reject["detail"]
    assert bridge.metric("fleet_bridge_db_errors_total", kind="permanent") >= 1

    later = (f"{prefix}meter/AFTER", meter_payload(now + timedelta(seconds=1), 2.0))
    await publish_async(*broker, [later])

    async def after_stored() -> bool:
        rows: int = await db.fetchval(
            f'SELECT count(*) FROM "{schema}".meter_current_state WHERE meter_id = $1', "AFTER"
        )
        return rows == 1

    await wait_for(after_stored, timeout=60, what="a reading after the poison batch")


@pytest.mark.slow
async def test_large_backlog_drains_in_bounded_memory(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    private_broker: MosquittoProcess,
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """200,000 readings queued in the bridge's session drain with the daemon's RSS
    under the bound stated in the README (150 MiB), and every one is stored."""
    port = {"FLEET_BRIDGE_MQTT_PORT": str(private_broker.port)}
    bridge = start_bridge(**port)
    await bridge.wait_ready()  # the session and its subscriptions now exist
    bridge.stop()

    devices, readings_each = 1000, 100
    start = clock.now().replace(microsecond=0) - timedelta(hours=3)
    messages, truth = fleet_messages(prefix, devices=devices, readings_each=readings_each, start=start)
    await asyncio.to_thread(publish, private_broker.host, private_broker.port, messages, timeout=600)

    bridge = start_bridge(**port)
    assert bridge.proc is not None
    process = psutil.Process(bridge.proc.pid)
    peak = 0
    expected = sum(len(v) for v in truth.values())
    deadline = time.monotonic() + 600
    while True:
        peak = max(peak, process.memory_info().rss)
        total = await history_total(db, schema)
        if total >= expected:
            break
        assert time.monotonic() < deadline, f"backlog not drained: {total}/{expected}"
        await asyncio.sleep(0.1)
    print(f"peak RSS during a {expected}-reading drain: {peak / 2**20:.1f} MiB")
    assert peak < 150 * 2**20
    assert total == expected
