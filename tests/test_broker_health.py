"""Broker health: the broker's $SYS figures as fleet_bridge_broker_* gauges, against a
real Mosquitto whose queue is tiny, one whose ACL keeps $SYS from the bridge, and
with the setting off."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import asyncpg
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge import clock
from bridge.broker_health import SYS_TOPICS, record
from bridge.metrics import Metrics
from tests.support.helpers import BridgeProcess, meter_payload, publish_async, wait_for
from tests.support.services import MosquittoProcess

QUEUE = 5  # max_queued_messages of the tiny broker
PUBLISHED = 50  # for a session that is away: QUEUE are kept, the rest dropped
GAUGES = ("fleet_bridge_broker_messages_dropped", "fleet_bridge_broker_messages_stored",
          "fleet_bridge_broker_clients_connected")  # fmt: skip


def broker_gauges(bridge: BridgeProcess) -> dict[str, dict[str, float]]:
    """Each broker gauge's samples, by their ``broker`` label."""
    families = bridge.scrape().families
    return {name: {s.labels["broker"]: s.value for s in families[name].samples} for name in GAUGES}


def leave_a_session_behind(broker: MosquittoProcess, topic_filter: str) -> None:
    """A persistent MQTT v5 session subscribed at QoS 1 whose client went away: the
    broker queues what it matches, up to max_queued_messages."""
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="away-for-now", protocol=paho.MQTTv5)
    client.on_subscribe = lambda *_: subscribed.set()
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    client.connect(broker.host, broker.port, clean_start=False, properties=properties)
    client.loop_start()
    try:
        client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(30), "no SUBACK"
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.unit
def test_each_sys_topic_sets_its_gauge_and_anything_else_is_ignored() -> None:
    """A $SYS value (a number as text) sets the gauge of its topic, labelled with the
    broker; other topics and payloads that are not numbers change nothing."""
    metrics = Metrics()
    for value, topic in enumerate(SYS_TOPICS, start=7):
        record(metrics, "mq:1883", topic, str(value).encode())
    record(metrics, "mq:1883", "$SYS/broker/uptime", b"12 seconds")
    record(metrics, "mq:1883", "$SYS/broker/clients/connected", b"many")
    samples = {name: metrics.registry.get_sample_value(name, {"broker": "mq:1883"}) for name in GAUGES}
    assert samples == dict(zip(GAUGES, (7.0, 8.0, 9.0), strict=True))


@pytest.mark.unit
def test_broker_series_appear_only_with_a_first_value() -> None:
    """Before the broker said anything, no broker series exists: a dropped count
    starting at 0 would turn the broker's total into an apparent rise."""
    text = "\n".join(f"{s.name} {s.value}" for family in Metrics().registry.collect() for s in family.samples)
    assert not [name for name in GAUGES if name in text]


@pytest.mark.integration
async def test_gauges_follow_the_broker_and_dropped_messages_rise_when_its_queue_overflows(
    private_broker_with: Callable[..., MosquittoProcess],
    start_bridge: Callable[..., BridgeProcess],
    db: asyncpg.Connection,
    prefix: str,
) -> None:
    """Against a broker that keeps 5 messages per away session and publishes $SYS
    every second: the gauges appear (both bridge connections among the clients);
    50 readings for an away session make the broker drop at least 45, and the
    dropped gauge rises to that while the stored one holds the kept ones."""
    broker = private_broker_with(f"max_queued_messages {QUEUE}\nsys_interval 1")
    bridge = start_bridge(FLEET_BRIDGE_MQTT_HOST=broker.host, FLEET_BRIDGE_MQTT_PORT=str(broker.port))
    await bridge.wait_ready()
    label = f"{broker.host}:{broker.port}"

    async def values_arrived() -> bool:
        gauges = await asyncio.to_thread(broker_gauges, bridge)
        return all(label in gauges[name] for name in GAUGES)

    await wait_for(values_arrived, timeout=60, what="the broker's first $SYS values")
    before = broker_gauges(bridge)
    assert before["fleet_bridge_broker_messages_dropped"][label] == 0

    await asyncio.to_thread(leave_a_session_behind, broker, f"{prefix}away/+")
    await publish_async(broker.host, broker.port, [(f"{prefix}away/1", b"%d" % n) for n in range(PUBLISHED)])

    async def dropped() -> bool:
        gauges = await asyncio.to_thread(broker_gauges, bridge)
        return gauges["fleet_bridge_broker_messages_dropped"][label] >= PUBLISHED - QUEUE

    await wait_for(dropped, timeout=60, what="the broker's dropped count to rise")

    async def only_the_bridge_connected() -> bool:
        gauges = await asyncio.to_thread(broker_gauges, bridge)
        return gauges["fleet_bridge_broker_clients_connected"][label] == 2  # the intake and the $SYS watcher

    await wait_for(only_the_bridge_connected, timeout=60, what="the publisher to leave the client count")
    assert broker_gauges(bridge)["fleet_bridge_broker_messages_stored"][label] >= QUEUE


@pytest.mark.integration
@pytest.mark.slow
async def test_a_broker_that_refuses_sys_is_logged_once_and_ingest_goes_on(
    private_broker_with: Callable[..., MosquittoProcess],
    start_bridge: Callable[..., BridgeProcess],
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    """An ACL that lets the bridge read its topics but not $SYS: one
    broker_stats_unavailable warning, no broker series, readings still stored."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic readwrite {prefix}#\n")
    broker = private_broker_with(f"acl_file {acl}\nsys_interval 1")
    bridge = start_bridge(FLEET_BRIDGE_MQTT_HOST=broker.host, FLEET_BRIDGE_MQTT_PORT=str(broker.port))
    await bridge.wait_ready()

    async def told() -> bool:
        return "broker_stats_unavailable" in bridge.logs()

    await wait_for(told, timeout=90, what="the bridge to say $SYS is unavailable")
    await publish_async(broker.host, broker.port, [(f"{prefix}meter/MTR-1", meter_payload(clock.now()))])

    async def stored() -> bool:
        return bool(await db.fetchval(f'SELECT count(*) FROM "{schema}".meter_current_state'))

    await wait_for(stored, timeout=60, what="the reading to be stored")
    assert bridge.logs().count("broker_stats_unavailable") == 1
    assert broker_gauges(bridge) == {name: {} for name in GAUGES}


@pytest.mark.integration
async def test_with_sys_topics_off_the_bridge_opens_no_second_connection(
    private_broker: MosquittoProcess, start_bridge: Callable[..., BridgeProcess], db: asyncpg.Connection, uid: str
) -> None:
    """FLEET_BRIDGE_MQTT_SYS_TOPICS=false: only the intake connects (the broker's log
    names every client id it accepts)."""
    bridge = start_bridge(
        FLEET_BRIDGE_MQTT_HOST=private_broker.host,
        FLEET_BRIDGE_MQTT_PORT=str(private_broker.port),
        FLEET_BRIDGE_MQTT_SYS_TOPICS="false",
    )
    await bridge.wait_ready()
    log = private_broker.log.read_text()
    assert f" as bridge-{uid} " in log
    assert f"bridge-{uid}-sys" not in log
