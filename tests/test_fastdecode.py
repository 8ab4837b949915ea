"""The PUBLISH fast path decodes exactly what paho's own decoder does."""

from __future__ import annotations

import struct

import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge import fastdecode

pytestmark = pytest.mark.unit

V5, V311 = MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311


def publish_packet(topic: bytes, payload: bytes, *, qos: int, mid: int, properties: bytes | None) -> bytes:
    """The variable header and payload of a PUBLISH, as paho hands them to the decoder."""
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", mid)
    if properties is not None:
        body += properties
    return body + payload


def with_properties() -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.MessageExpiryInterval = 30
    props.UserProperty = ("site", "a")
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packed


CASES = [
    pytest.param(0x32, b"meter/MTR-1", b'{"ts": 1}', 1, 77, b"\x00", V5, id="v5 qos1 no properties"),
    pytest.param(0x3B, b"vehicle/EV-1", b"x" * 300, 1, 65535, b"\x00", V5, id="v5 dup retain"),
    pytest.param(0x30, b"meter/M", b"", 0, 0, b"\x00", V5, id="v5 qos0 empty payload"),
    pytest.param(0x32, b"meter/M", b"{}", 1, 5, None, V5, id="v5 with properties"),
    pytest.param(0x32, b"meter/M", b"\x00\x01", 1, 5, b"\x00", V5, id="payload starting with NUL"),
    pytest.param(0x32, b"meter/M", b"{}", 1, 9, b"", V311, id="v3.1.1"),
]


@pytest.mark.parametrize(("header", "topic", "payload", "qos", "mid", "properties", "protocol"), CASES)
def test_fast_path_equals_paho(
    header: int, topic: bytes, payload: bytes, qos: int, mid: int, properties: bytes | None,
    protocol: MQTTProtocolVersion,
) -> None:  # fmt: skip
    """Every field matches paho's decoder; properties, when present, are paho's own."""
    props = with_properties() if properties is None else properties
    packet = publish_packet(topic, payload, qos=qos, mid=mid, properties=props if protocol == V5 else None)
    fast = fastdecode.decode_publish(header, packet, protocol)
    slow = fastdecode._original(header, packet, protocol)
    assert (fast.dup, fast.qos, fast.retain, fast.topic, fast.mid, bytes(fast.payload)) == (
        slow.dup, slow.qos, slow.retain, slow.topic, slow.mid, bytes(slow.payload),
    )  # fmt: skip
    if properties is None:
        assert fast.properties is not None
        assert getattr(fast.properties, "UserProperty") == [("site", "a")]  # noqa: B009 - set dynamically by paho
    elif protocol == V5:
        assert fast.properties is None


def test_install_replaces_paho_decoder() -> None:
    """After install(), paho's client decodes through the fast path."""
    fastdecode.install()
    assert _packet.decode_publish is fastdecode.decode_publish


def test_truncated_packet_is_malformed_as_with_paho() -> None:
    """A PUBLISH cut off before its message id raises paho's MalformedPacket, not IndexError."""
    truncated = struct.pack("!H", 7) + b"meter/M"  # QoS 1 but no message id
    with pytest.raises(MalformedPacket):
        fastdecode.decode_publish(0x32, truncated, V5)
