"""Several daemons in one MQTT shared-subscription group, against one broker and one
database: each distinct reading stored exactly once, current state the newest
reading, every replica busy, no deadlock; a replica killed and restarted loses
nothing because its share waits in its persistent session."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable

import asyncpg
import pytest

from tests.support.fleet_data import (
    fleet_messages,
    publish_paced,
    wait_stored_exactly,
    with_faults,
)
from tests.support.helpers import BridgeProcess, publish_async, wait_for

pytestmark = pytest.mark.integration

DEADLOCK = re.compile(r"DeadlockDetected|40P01|deadlock detected", re.IGNORECASE)
# Small batches: more transactions overlapping between the replicas.
BATCH = {"FLEET_BRIDGE_BATCH_MAX_ROWS": "500"}


def replica_env(uid: str, n: int) -> dict[str, str]:
    """Replica ``n`` of the group: its own client id (session), the group's name."""
    return {"FLEET_BRIDGE_MQTT_CLIENT_ID": f"bridge-{uid}-{n}", "FLEET_BRIDGE_MQTT_SHARED_GROUP": f"g{uid}", **BATCH}


async def start_replicas(start_bridge: Callable[..., BridgeProcess], uid: str, count: int) -> list[BridgeProcess]:
    replicas = [start_bridge(**replica_env(uid, n)) for n in range(count)]
    await asyncio.gather(*(r.wait_ready() for r in replicas))
    return replicas


def assert_no_deadlock(replicas: list[BridgeProcess]) -> None:
    for replica in replicas:
        found = DEADLOCK.findall(replica.logs())
        assert not found, f"{replica.log_path.name}: {found[:3]}"


@pytest.mark.slow
async def test_three_replicas_store_50000_readings_exactly_once_without_deadlock(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    uid: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """Three replicas in one shared group, 50,000 distinct readings (1,000 meters and
    1,000 vehicles) plus 5% duplicates, 5% out of order: duplicates of one reading
    land on different replicas and race in the database. Each distinct reading is in
    history once, current state is each device's newest, every replica received
    readings, the replicas' counters add up exactly (rows written = distinct
    readings, duplicates = the copies), and no log mentions a deadlock."""
    messages, truth = fleet_messages(prefix, devices=1000, readings_each=25)
    published = with_faults(messages, 0.05)
    replicas = await start_replicas(start_bridge, uid, 3)

    await publish_async(*broker, published)
    await wait_stored_exactly(db, schema, truth, timeout=300, after="in history")

    def settled() -> bool:
        received = sum(r.metric("fleet_bridge_messages_received_total") for r in replicas)
        return received == len(published) and all(r.metric("fleet_bridge_inflight_messages") == 0 for r in replicas)

    async def all_acknowledged() -> bool:
        return await asyncio.to_thread(settled)

    await wait_for(all_acknowledged, timeout=60, what="every message received and acknowledged")
    received = [r.metric("fleet_bridge_messages_received_total") for r in replicas]
    assert all(n > 0 for n in received), f"a replica took no part: {received}"
    assert sum(r.metric("fleet_bridge_rows_written_total") for r in replicas) == len(messages)
    assert sum(r.metric("fleet_bridge_duplicates_total") for r in replicas) == len(published) - len(messages)
    assert_no_deadlock(replicas)


@pytest.mark.slow
@pytest.mark.fault
async def test_replica_killed_and_restarted_after_10_s_loses_nothing(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    uid: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """Three replicas; one is killed with SIGKILL while 30,000 readings (with
    duplicates and disorder) are published, and restarted under the same client id
    10 s later, after the publisher finished. Its unacknowledged messages and its
    share of what arrived while it was away waited in its session at the broker
    (Mosquitto does not hand them to the other replicas): the restarted replica
    receives them, and every reading is in history exactly once."""
    messages, truth = fleet_messages(prefix, devices=500, readings_each=30)
    replicas = await start_replicas(start_bridge, uid, 3)
    publisher = threading.Thread(target=publish_paced, args=(*broker, with_faults(messages, 0.05), 20, 0.25))
    publisher.start()

    async def some_rows() -> bool:
        return bool(await db.fetchval(f'SELECT count(*) FROM "{schema}".meter_telemetry_history'))

    await wait_for(some_rows, timeout=60, what="the first commits")
    replicas[0].kill()
    await asyncio.sleep(10)
    await asyncio.to_thread(publisher.join)
    restarted = start_bridge(**replica_env(uid, 0))
    await restarted.wait_ready()

    await wait_stored_exactly(db, schema, truth, timeout=300, after="in history")
    # Published before it came back, so held for its session all along.
    assert restarted.metric("fleet_bridge_messages_received_total") > 0
    assert_no_deadlock([*replicas, restarted])
