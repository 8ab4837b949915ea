"""MQTT packet framing and PUBLISH decoding for the receive path (pure, no IO).

Draining a backlog through paho-mqtt costs more per message than everything
else the bridge does with a reading: three or four ``recv`` calls per packet, a
``Properties`` object, an ``MQTTMessage`` with its own ``threading.Condition``,
a walk of the topic matcher, then aiomqtt's ``Message``. The bridge reads the
socket itself (bridge/ingest/fast_link.py) and splits what it read here: a PUBLISH becomes a
``Publish`` of four fields; every other packet (SUBACK, PINGRESP, DISCONNECT,
...) is handed back to paho, which keeps the protocol state.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import NamedTuple

__all__ = ["Frames", "Malformed", "Publish", "split_packets"]

_PUBLISH = 0x30


class Publish(NamedTuple):
    """One received PUBLISH: what the bridge needs to store and acknowledge it."""

    topic: str
    payload: bytes
    mid: int  # 0 at QoS 0
    qos: int
    # When the bridge read it off the socket (one clock reading per read); None
    # where no one read a socket (a PUBLISH made up by a test).
    received_at: datetime | None = None


class Malformed(ValueError):
    """The bytes break the MQTT framing rules: the connection cannot continue."""


@dataclasses.dataclass(slots=True)
class Frames:
    """The complete packets at the start of a buffer."""

    publishes: list[Publish]
    others: list[tuple[int, bytes]]  # (fixed header byte, body) of every other packet, in order
    consumed: int  # bytes used; the rest starts an incomplete packet (or was not wanted yet)


def split_packets(data: bytes | bytearray, max_publishes: int, received_at: datetime | None = None) -> Frames:
    """Split ``data`` into packets, stopping before the PUBLISH that would exceed
    ``max_publishes`` or at the first incomplete packet; each PUBLISH carries
    ``received_at``. Raises ``Malformed``."""
    frames = Frames([], [], 0)
    size = len(data)
    pos = 0
    while pos < size:
        header = data[pos]
        remaining = _varint(data, pos + 1, size)
        if remaining is None:
            break  # the length bytes themselves are not all here yet
        length, start = remaining
        end = start + length
        if end > size:
            break
        if header & 0xF0 == _PUBLISH:
            if len(frames.publishes) >= max_publishes:
                break
            frames.publishes.append(_publish(data, header, start, end, received_at))
        else:
            frames.others.append((header, bytes(data[start:end])))
        pos = end
    frames.consumed = pos
    return frames


def _varint(data: bytes | bytearray, at: int, limit: int) -> tuple[int, int] | None:
    """MQTT's variable byte integer at ``at``: (value, offset after it), or None
    when ``limit`` cuts it short."""
    value = 0
    for shift in (0, 7, 14, 21):
        if at >= limit:
            return None
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
    raise Malformed("variable byte integer longer than 4 bytes")


def _publish(data: bytes | bytearray, header: int, start: int, end: int, received_at: datetime | None) -> Publish:
    qos = (header >> 1) & 0x03
    if qos > 1:
        # We subscribe at QoS 1, so a broker may not send more (MQTT 5, 3.8.4).
        raise Malformed(f"PUBLISH at QoS {qos} on a QoS 1 subscription")
    if start + 2 > end:
        raise Malformed("PUBLISH without a topic length")
    at = start + 2 + ((data[start] << 8) | data[start + 1])
    if at > end:
        raise Malformed("PUBLISH topic longer than the packet")
    try:
        topic = data[start + 2 : at].decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("PUBLISH topic is not UTF-8") from None
    mid = 0
    if qos:
        if at + 2 > end:
            raise Malformed("PUBLISH without a message id")
        mid = (data[at] << 8) | data[at + 1]
        at += 2
    # MQTT v5 properties (content type, user properties, ...) carry nothing the bridge uses.
    properties = _varint(data, at, end)
    if properties is None:
        raise Malformed("PUBLISH properties cut short")
    at = properties[1] + properties[0]
    if at > end:
        raise Malformed("PUBLISH properties longer than the packet")
    return Publish(topic, bytes(data[at:end]), mid, qos, received_at)
