"""MQTT framing on the receive path: packets split exactly, whatever the read
boundaries; PUBLISH fields equal paho's own decoder's; broken framing is refused."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.ingest.wire import Malformed, Publish, split_packets
from tests.support.fake_broker import packet

pytestmark = pytest.mark.unit

PINGRESP = (0xD0, b"")
SUBACK = (0x90, b"\x00\x01\x00\x01")  # packet id 1, no properties, granted QoS 1


def publish_body(topic: str, payload: bytes, *, qos: int, mid: int, properties: bytes = b"\x00") -> bytes:
    encoded = topic.encode()
    return struct.pack("!H", len(encoded)) + encoded + (struct.pack("!H", mid) if qos else b"") + properties + payload


def publish_packet(message: Publish, properties: bytes = b"\x00") -> bytes:
    body = publish_body(message.topic, message.payload, qos=message.qos, mid=message.mid, properties=properties)
    return packet(0x30 | message.qos << 1, body)


def user_properties() -> bytes:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = "application/json"
    props.UserProperty = ("site", "a")
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return packed


publishes = st.builds(
    lambda topic, payload, qos, mid: Publish(topic, payload, mid if qos else 0, qos),
    st.text(max_size=40),
    st.binary(max_size=300),
    st.sampled_from([0, 1]),
    st.integers(1, 65535),
)
stream_items = st.lists(st.one_of(publishes, st.sampled_from([PINGRESP, SUBACK])), max_size=30)


def feed(stream: bytes, cuts: list[int], max_publishes: int = 10**6) -> tuple[list[Publish], list[tuple[int, bytes]]]:
    """Split ``stream`` as the connection does: reads end at ``cuts``, the unsplit rest waits."""
    got: list[Publish] = []
    others: list[tuple[int, bytes]] = []
    inbox = bytearray()
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        inbox += stream[start:end]
        frames = split_packets(inbox, max_publishes)
        got += frames.publishes
        others += frames.others
        del inbox[: frames.consumed]
    assert inbox == b"", "a complete stream leaves nothing unsplit"
    assert all(type(p.payload) is bytes for p in got), "payloads are bytes, whatever the buffer"
    return got, others


@given(stream_items, st.data())
def test_any_read_boundaries_give_the_packets_back_in_order(
    items: list[Publish | tuple[int, bytes]], data: st.DataObject
) -> None:
    """Cutting the byte stream anywhere (mid-header, mid-length, mid-body) loses,
    duplicates or reorders nothing."""
    stream = b"".join(publish_packet(i) if isinstance(i, Publish) else packet(*i) for i in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    got, others = feed(stream, cuts)
    assert got == [i for i in items if isinstance(i, Publish)]
    assert others == [i for i in items if not isinstance(i, Publish)]


@pytest.mark.parametrize(
    ("qos", "properties"),
    [(1, b"\x00"), (0, b"\x00"), (1, user_properties()), (0, user_properties())],
    ids=["qos1", "qos0", "qos1 with properties", "qos0 with properties"],
)
def test_publish_fields_equal_paho_decoder(qos: int, properties: bytes) -> None:
    """Topic, message id and payload are what paho's own decoder reads, properties skipped."""
    body = publish_body("vehicle/EV-00001", b'{"ts": 1}', qos=qos, mid=513, properties=properties)
    header = 0x30 | qos << 1 | 0x08  # DUP set: ignored by both
    (ours,) = split_packets(packet(header, body), 10).publishes
    theirs = _packet.decode_publish(header, body, MQTTProtocolVersion.MQTTv5)
    assert (ours.topic.encode(), ours.payload, ours.mid, ours.qos) == (
        theirs.topic, bytes(theirs.payload), theirs.mid, theirs.qos,
    )  # fmt: skip


def test_stops_before_the_publish_over_the_limit() -> None:
    """The cap leaves the next PUBLISH (and all after it) in the buffer, unsplit."""
    first, second = Publish("a", b"1", 1, 1), Publish("b", b"2", 2, 1)
    stream = publish_packet(first) + packet(*PINGRESP) + publish_packet(second)
    frames = split_packets(stream, 1)
    assert frames.publishes == [first]
    assert frames.others == [PINGRESP]
    assert stream[frames.consumed :] == publish_packet(second)
    assert split_packets(stream, 0).publishes == []


def test_incomplete_packet_is_left_for_the_next_read() -> None:
    """Every proper prefix of a packet yields nothing and consumes nothing."""
    whole = publish_packet(Publish("meter/M", b"x" * 200, 7, 1))
    for cut in range(len(whole)):
        frames = split_packets(whole[:cut], 10)
        assert (frames.publishes, frames.others, frames.consumed) == ([], [], 0)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"\x32\xff\xff\xff\xff\x01", "longer than 4 bytes"),
        (packet(0x34, publish_body("t", b"", qos=1, mid=1)), "QoS 2"),
        (packet(0x36, publish_body("t", b"", qos=1, mid=1)), "QoS 3"),
        (packet(0x32, b"\x00"), "without a topic length"),
        (packet(0x32, b"\x00\x09abc"), "topic longer than the packet"),
        (packet(0x32, b"\x00\x02\xff\xfe\x00\x01\x00"), "not UTF-8"),
        (packet(0x32, b"\x00\x01t\x00"), "without a message id"),
        (packet(0x32, b"\x00\x01t\x00\x01"), "properties cut short"),
        (packet(0x32, b"\x00\x01t\x00\x01\x05\x01"), "properties longer than the packet"),
    ],
    ids=["length", "qos2", "qos3", "no topic length", "short topic", "utf8", "no mid", "no props", "long props"],
)
def test_broken_framing_is_refused(stream: bytes, message: str) -> None:
    """Bytes no broker may send raise Malformed (the connection is then dropped), naming what is wrong."""
    with pytest.raises(Malformed, match=message):
        split_packets(stream, 10)
