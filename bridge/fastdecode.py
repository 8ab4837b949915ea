"""A fast path for paho's decoding of MQTT v5 PUBLISH packets without properties.

paho builds a ``Properties`` object for every v5 PUBLISH, and its constructor
fills a table of every property MQTT defines: about 40 µs per message, more than
everything else the bridge does with a reading. Mosquitto forwards device
readings with no properties at all (property length 0), so for those this
returns the same ``PublishPacket`` paho would, minus the empty object, in about
3 µs. Anything else (v3.1.1, any property present) goes to paho's own decoder.

It replaces ``paho.mqtt._packet.decode_publish`` once, process-wide; the
equivalence with the original is tested (tests/test_fastdecode.py) and paho is
pinned to the minor versions that were checked.
"""

from __future__ import annotations

from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion

__all__ = ["decode_publish", "install"]

_original = _packet.decode_publish
_V5 = MQTTProtocolVersion.MQTTv5


def decode_publish(header: int, packet: bytes | bytearray, protocol: MQTTProtocolVersion) -> _packet.PublishPacket:
    """paho's ``decode_publish``, without a Properties object when there are none."""
    try:
        fast = _decode_without_properties(header, packet, protocol)
    except IndexError:  # truncated: paho's decoder raises the proper MalformedPacket
        fast = None
    return fast if fast is not None else _original(header, packet, protocol)


def _decode_without_properties(
    header: int, packet: bytes | bytearray, protocol: MQTTProtocolVersion
) -> _packet.PublishPacket | None:
    if protocol == _V5 and len(packet) >= 2:
        qos = (header & 0x06) >> 1
        topic_end = 2 + ((packet[0] << 8) | packet[1])
        mid, properties_at = 0, topic_end
        if qos:
            mid, properties_at = (packet[topic_end] << 8) | packet[topic_end + 1], topic_end + 2
        if properties_at < len(packet) and packet[properties_at] == 0:
            return _packet.PublishPacket(
                dup=bool(header & 0x08),
                qos=qos,
                retain=bool(header & 0x01),
                topic=bytes(packet[2:topic_end]),
                mid=mid,
                properties=None,
                payload=bytes(packet[properties_at + 1 :]),
            )
    return None


def install() -> None:
    """Route paho's PUBLISH decoding through the fast path (idempotent)."""
    _packet.decode_publish = decode_publish
