"""Broker health: Mosquitto's own figures, from its ``$SYS`` topics, as gauges.

When the broker's queue overflows, readings are lost there, before the bridge
could see them: only the broker can count them. This module subscribes to three
of Mosquitto's ``$SYS`` topics and mirrors them in ``fleet_bridge_broker_*``
gauges (bridge/metrics.py).

It uses a connection of its own, apart from the intake's persistent session: a
clean session under the client id ``<client_id>-sys`` at QoS 0, so that nothing
here can hold, delay or take over a reading, and a broker that refuses ``$SYS``
costs the intake nothing. Mosquitto 2.0 grants a subscription its ACL refuses
and then sends nothing, so a refusal shows as silence: the values are retained
and arrive at once when allowed. Either way it is logged once and the bridge goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiomqtt
import structlog
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import Gauge

from bridge.config import Settings
from bridge.ingest.link import side_client
from bridge.metrics import Metrics
from bridge.retry import backoff_delay

__all__ = ["SYS_TOPICS", "record", "watch_broker"]

log = structlog.get_logger("bridge.broker_health")

# Mosquitto's topic -> the Metrics attribute of its gauge.
SYS_TOPICS = {
    "$SYS/broker/publish/messages/dropped": "broker_messages_dropped",
    "$SYS/broker/store/messages/count": "broker_messages_stored",
    "$SYS/broker/clients/connected": "broker_clients_connected",
}
# The retained values arrive right after the SUBACK; none by then means none will.
SILENCE_S = 15.0
INTAKE_POLL_S = 1.0  # how often to look whether the intake is connected, while it is not
SILENT = (
    f"no $SYS values within {SILENCE_S:g} s: the broker's ACL refuses them to this user, or it does not publish them"
)


def record(metrics: Metrics, broker: str, topic: str, payload: object) -> None:
    """Set the gauge of one ``$SYS`` message (a number as text); ignore anything else."""
    name = SYS_TOPICS.get(topic)
    if name is None or not isinstance(payload, bytes | bytearray | str):
        return
    try:
        value = float(payload)
    except ValueError:
        return
    gauge: Gauge = getattr(metrics, name)
    gauge.labels(broker).set(value)


def _forget(metrics: Metrics, broker: str) -> None:
    """Drop the broker's series while they cannot be refreshed (a gap, not a stale value)."""
    for name in SYS_TOPICS.values():
        gauge: Gauge = getattr(metrics, name)
        with contextlib.suppress(KeyError):
            gauge.remove(broker)


async def watch_broker(settings: Settings, metrics: Metrics, intake_connected: Callable[[], bool]) -> None:
    """Follow the broker's ``$SYS`` figures until cancelled (``mqtt.sys_topics`` off: return).

    It connects only while the intake is connected: a broker that is down or refuses
    the bridge's login then sees one bridge reconnecting, not two.
    """
    mqtt = settings.mqtt
    if not mqtt.sys_topics:
        return
    broker = f"{mqtt.host}:{mqtt.port}"
    loop = asyncio.get_running_loop()
    heard = told = False

    def unavailable(detail: str) -> None:
        nonlocal told
        if not told:  # once, however often the connection comes back
            told = True
            log.warning("broker_stats_unavailable", broker=broker, detail=detail)

    def still_silent() -> None:
        if not heard:
            unavailable(SILENT)

    attempt = 0
    while True:
        # The intake keeps a plain flag (Health), not an event: a look once a second is enough.
        while not intake_connected():  # noqa: ASYNC110
            await asyncio.sleep(INTAKE_POLL_S)
        try:
            async with side_client(
                settings, "sys", protocol=aiomqtt.ProtocolVersion.V5, clean_start=True, keepalive=mqtt.keepalive_s
            ) as client:
                attempt = 0
                granted = await client.subscribe([(topic, 0) for topic in SYS_TOPICS])
                # MQTT v5: one reason code per topic (a plain int only for v3.1.1).
                if any(code.is_failure for code in granted if isinstance(code, ReasonCode)):
                    unavailable("the broker refused the $SYS topics to this user (ACL)")
                    return
                silence = None if heard else loop.call_later(SILENCE_S, still_silent)
                try:
                    async for message in client.messages:
                        heard = True
                        record(metrics, broker, message.topic.value, message.payload)
                finally:
                    if silence is not None:
                        silence.cancel()
        except aiomqtt.MqttError as exc:
            _forget(metrics, broker)
            attempt += 1
            delay = backoff_delay(attempt)
            log.debug("broker_stats_disconnected", broker=broker, error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)
