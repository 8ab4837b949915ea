"""The core path against real Mosquitto and PostgreSQL: every distinct reading stored
once, current state equal to the newest reading, partitions made on demand."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import aiomqtt
import asyncpg
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge import clock
from tests.support.fleet_data import assert_stored_exactly, count, fleet_messages, history_total, with_faults
from tests.support.helpers import BOTH_READERS, BridgeProcess, meter_payload, publish_async, vehicle_payload, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.clock,
    pytest.mark.parametrize("reader", BOTH_READERS, indirect=True),
]


@pytest.mark.slow
async def test_readings_with_duplicates_and_disorder_are_stored_exactly_once(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """20,000 readings from 1,000 meters and 1,000 vehicles with 5% duplicates and 5%
    out of order: each distinct (device, ts) is in history once, and each current
    state row is its device's newest reading."""
    messages, truth = fleet_messages(prefix, devices=1000, readings_each=10)
    bridge = start_bridge()
    await bridge.wait_ready()
    await publish_async(*broker, with_faults(messages, 0.05))

    expected = sum(len(v) for v in truth.values())
    await wait_for(lambda: _history_total_is(db, schema, expected), timeout=120, what=f"{expected} history rows")
    await assert_stored_exactly(db, schema, truth)
    assert await count(db, schema, "ingest_rejects") == 0
    assert bridge.metric("fleet_bridge_rows_written_total") == expected
    assert bridge.metric("fleet_bridge_duplicates_total") == len(messages) * 0.05 // 1


async def _history_total_is(db: asyncpg.Connection, schema: str, expected: int) -> bool:
    total = await history_total(db, schema)
    assert total <= expected, f"more rows than distinct readings: {total} > {expected}"
    return total == expected


async def test_reading_for_a_day_without_partition_is_stored_in_a_new_partition(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """The daemon premakes today and the days after; a reading from two days ago gets its day on demand."""
    two_days_ago = clock.now().replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=2)
    partition = f"meter_telemetry_history_p{two_days_ago:%Y%m%d}"
    assert await db.fetchval("SELECT to_regclass($1)", f'"{schema}".{partition}') is None

    bridge = start_bridge()
    await bridge.wait_ready()
    await publish_async(*broker, [(f"{prefix}meter/MTR-1", meter_payload(two_days_ago, 1.25))])

    async def stored() -> bool:
        rows: int = await db.fetchval(f'SELECT count(*) FROM "{schema}".{partition}')
        return rows == 1

    async def partition_exists() -> bool:
        return await db.fetchval("SELECT to_regclass($1)", f'"{schema}".{partition}') is not None

    await wait_for(partition_exists, timeout=60, what="the on-demand partition")
    await wait_for(stored, timeout=60, what="the reading in the new partition")
    row = await db.fetchrow(f'SELECT * FROM "{schema}".meter_telemetry_history WHERE meter_id = $1', "MTR-1")
    assert row is not None
    assert row["recorded_at"] == two_days_ago
    assert row["kwh_consumed_ac"] == 1.25


async def test_readings_published_with_v5_properties_or_at_qos0_are_stored(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """Mosquitto forwards a publisher's MQTT 5 properties (content type, user
    properties) and QoS 0 stays QoS 0: the bridge's packet reader takes both."""
    bridge = start_bridge()
    await bridge.wait_ready()
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "application/json"
    props.UserProperty = [("site", "depot-7"), ("fw", "1.2.3")]
    ts = clock.now().replace(microsecond=0)
    async with aiomqtt.Client(*broker, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(f"{prefix}meter/MTR-P", meter_payload(ts, 2.5), qos=1, properties=props)
        await client.publish(f"{prefix}vehicle/EV-P", vehicle_payload(ts, 2.25), qos=0, properties=props)
        await client.publish(f"{prefix}meter/MTR-Q", meter_payload(ts, 1.5), qos=0)

    async def all_stored() -> bool:
        return await history_total(db, schema) == 3

    await wait_for(all_stored, timeout=60, what="three readings")
    rows = await db.fetch(f'SELECT meter_id, kwh_consumed_ac FROM "{schema}".meter_telemetry_history')
    meters = {row["meter_id"]: row["kwh_consumed_ac"] for row in rows}
    assert meters == {"MTR-P": 2.5, "MTR-Q": 1.5}
    vehicle = await db.fetchval(f'SELECT kwh_delivered_dc FROM "{schema}".vehicle_telemetry_history')
    assert vehicle == 2.25
    assert await count(db, schema, "ingest_rejects") == 0


async def test_the_daemon_tells_the_time_by_the_moved_clock(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """With bridge.clock moved three years ahead, the daemon stores a reading stamped a
    minute before that moved "now" (real time would call it a future timestamp), stamps
    its receive time in the moved era, premakes the moved day's partitions and warns
    that its clock was moved."""
    moved = clock.now().replace(microsecond=0) + timedelta(days=3 * 365)
    bridge = start_bridge(**{clock.CLOCK_ENV: moved.isoformat()})
    await bridge.wait_ready()
    await publish_async(*broker, [(f"{prefix}meter/MTR-1", meter_payload(moved - timedelta(minutes=1)))])

    await wait_for(lambda: _history_total_is(db, schema, 1), timeout=60, what="the reading")
    received_at = await db.fetchval(f'SELECT received_at FROM "{schema}".meter_telemetry_history')
    assert moved <= received_at < moved + timedelta(minutes=10)
    assert await count(db, schema, "ingest_rejects") == 0
    premade = f'"{schema}".meter_telemetry_history_p{moved + timedelta(days=1):%Y%m%d}'

    async def premade_exists() -> bool:
        return await db.fetchval("SELECT to_regclass($1)", premade) is not None

    await wait_for(premade_exists, timeout=60, what=f"the premade partition {premade}")
    assert '"clock_moved"' in bridge.logs()
