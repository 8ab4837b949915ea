"""The fast reader: once subscribed, the bridge reads the broker socket itself.

Draining a backlog through paho costs more per message than everything else the
bridge does with a reading (several ``recv`` calls per packet, a Properties
object, an MQTTMessage with its own lock). So: 64 KiB reads, split into packets by
bridge/ingest/wire.py; a PUBLISH becomes a ``Publish`` tuple; every other packet is
handed to paho, which keeps the protocol state; a batch's PUBACKs are written as
one run of bytes. Everything private of paho that this needs goes through
bridge/ingest/paho_internals.py.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

from bridge import clock
from bridge.ingest import paho_internals, wire
from bridge.ingest.link import QOS, Publish
from bridge.ingest.paho_link import PahoLink

__all__ = ["FastLink"]

log = structlog.get_logger("bridge.ingest.link")

_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, message id
READ_CHUNK = 65536


class FastLink(PahoLink):
    """A broker connection whose socket the bridge reads itself once subscribed."""

    _inbox: bytearray  # read from the socket, not yet split into packets
    _read_at: datetime  # when the inbox's newest bytes were read
    _own_reader = False

    def _on_gated(self) -> None:
        # Only now, not at connect: until the SUBACK is in, paho's own reader takes
        # what the session had queued (at most ReceiveMaximum messages).
        self._inbox = bytearray()
        self._own_reader = True

    def ack(self, messages: Sequence[Publish]) -> None:
        pubacks = b"".join(_PUBACK.pack(paho.PUBACK, 2, m.mid) for m in messages if m.qos == QOS)
        if pubacks:
            paho_internals.queue_raw(self.client, paho.PUBACK, pubacks)
            self._write_now()

    def _hold_keepalive(self) -> None:
        paho_internals.hold_keepalive(self.client)

    def _read(self) -> None:
        if not self._own_reader or paho_internals.mid_packet(self.client):
            # paho was part-way through a packet when we took the socket over.
            self.client.loop_read()
            return
        self._dispatch()  # what a pause left unsplit
        if self._window.room > 0 and self.client.socket() is not None:
            self._receive()
            self._dispatch()

    def _receive(self) -> None:
        try:
            data = paho_internals.recv(self.client, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("mqtt_read_failed", broker=self.address, error=str(exc))
            data = b""
        if not data:
            self._lose(MQTTErrorCode.MQTT_ERR_CONN_LOST)
            return
        paho_internals.note_bytes_received(self.client)
        self._inbox += data
        self._read_at = clock.now()

    def _dispatch(self) -> None:
        """Queue the complete PUBLISH packets (up to the window), hand the rest to paho."""
        if not self._inbox:
            return
        try:
            frames = wire.split_packets(self._inbox, max(self._window.room, 0), self._read_at)
        except wire.Malformed as exc:
            log.warning("mqtt_protocol_error", broker=self.address, error=str(exc))
            self._lose(MQTTErrorCode.MQTT_ERR_PROTOCOL)
            return
        del self._inbox[: frames.consumed]
        if frames.publishes:
            self._queue(frames.publishes)
        for header, body in frames.others:
            try:
                rc = paho_internals.handle_packet(self.client, header, body)
            except MalformedPacket as exc:
                log.warning("mqtt_protocol_error", broker=self.address, error=str(exc))
                rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lose(rc)
                return

    def _lose(self, rc: MQTTErrorCode) -> None:
        """Close the link as paho's own reader would on ``rc``; paho reports the loss."""
        self._inbox.clear()
        paho_internals.lose(self.client, rc)
