"""The broker side: one MQTT v5 connection with a persistent session, manual
acknowledgement after COMMIT, and a read gate that bounds the messages held in
the process whatever the broker's backlog.

aiomqtt (through paho) connects, subscribes, keeps the link alive and reconnects
cleanly; once subscribed, this module reads the socket itself, because aiomqtt
2.5 has no public API for what follows (this module, and only this one, reaches
into it):

* manual acknowledgement (aiomqtt PR #346 is still open): paho's
  ``manual_ack_set(True)`` before connecting, then PUBACKs written after COMMIT;
* pausing socket reads: Mosquitto 2.0 stops honouring ReceiveMaximum once acks
  start flowing and pushes its whole queue, so the process must stop reading
  the socket while too many messages wait in it (TCP back-pressure then keeps
  the backlog in the broker);
* the per-message cost when draining a backlog: 64 KiB reads split into packets
  by bridge/ingest/wire.py, PUBLISH packets queued here as ``Publish`` tuples, every
  other packet handed to paho as if it had read it itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import struct
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.config import Settings
from bridge.ingest import wire
from bridge.ingest.wire import Publish

__all__ = ["BrokerConnection", "Publish", "subscription_filters"]

log = structlog.get_logger("bridge.ingest.mqtt")

QOS = 1
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, message id
READ_CHUNK = 65536
SUBSCRIBE_TIMEOUT_S = 60


def subscription_filters(settings: Settings) -> list[str]:
    """``meter/+`` and ``vehicle/+`` under the prefix, shared when a group is set."""
    filters = [f"{settings.mqtt.topic_prefix}{stream}/+" for stream in ("meter", "vehicle")]
    group = settings.mqtt.shared_group
    return [f"$share/{group}/{f}" for f in filters] if group else filters


def tls_parameters(settings: Settings) -> aiomqtt.TLSParameters | None:
    mqtt = settings.mqtt
    if mqtt.tls_ca_file is None:
        return None
    if mqtt.tls_insecure:
        log.warning("mqtt_tls_insecure", detail="the broker certificate's host name is not checked")
    return aiomqtt.TLSParameters(
        ca_certs=mqtt.tls_ca_file,
        certfile=mqtt.tls_cert_file,
        keyfile=mqtt.tls_key_file,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )


def connect_properties(settings: Settings, receive_maximum: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    # A non-zero expiry plus clean_start=False keeps the session (subscriptions and
    # unacknowledged messages) across restarts of the bridge.
    props.SessionExpiryInterval = settings.mqtt.session_expiry_s
    props.ReceiveMaximum = receive_maximum
    return props


def _in_packet(header: int = 0, body: bytes = b"") -> paho._InPacket:
    """paho's reader state: idle (``header`` 0, as it leaves it between packets) or
    holding one whole packet, ready for its ``_packet_handle``."""
    return {
        "command": header, "have_remaining": 1 if header else 0, "remaining_count": [], "remaining_mult": 1,
        "remaining_length": len(body), "packet": bytearray(body), "to_process": 0, "pos": 0,
    }  # fmt: skip


class BrokerConnection:
    """One connection to the broker. A fresh instance per connection, so message
    ids of a dead connection are never acknowledged on a new one."""

    def __init__(self, settings: Settings, *, receive_maximum: int, held: Callable[[], int], max_held: int) -> None:
        """``held()`` counts the messages taken from this connection and not yet acknowledged."""
        self._settings = settings
        self._held = held
        self._max_held = max_held
        self._paused = False
        self._fileno = -1
        self._keepalive_s = settings.mqtt.keepalive_s
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._inbox = bytearray()  # read from the socket, not yet split into packets
        self._received: collections.deque[Publish] = collections.deque()
        self._arrival: asyncio.Future[None] | None = None  # set when _received gains messages
        self.client = aiomqtt.Client(
            settings.mqtt.host,
            settings.mqtt.port,
            identifier=settings.mqtt.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            keepalive=settings.mqtt.keepalive_s,
            username=settings.mqtt.username,
            password=settings.mqtt_password(),
            properties=connect_properties(settings, receive_maximum),
            tls_params=tls_parameters(settings),
            tls_insecure=settings.mqtt.tls_insecure or None,
            timeout=10,
        )
        self._paho: paho.Client = self.client._client  # noqa: SLF001 - see module docstring
        self._paho.manual_ack_set(True)
        # Messages paho itself reads (before subscribing completes) join ours.
        self._paho.on_message = self._on_paho_message

    @property
    def connected(self) -> bool:
        # paho still says connected for a moment after some losses (a protocol
        # error, the broker's DISCONNECT); its socket is gone by then.
        return self._paho.is_connected() and self._paho.socket() is not None

    async def __aenter__(self) -> Self:
        await self.client.__aenter__()
        try:
            # Always subscribe: a no-op for a live session, a restore for a lost one.
            for topic_filter in subscription_filters(self._settings):
                # A long backlog can queue the SUBACK behind a receive window of messages.
                await self.client.subscribe(topic_filter, qos=QOS, timeout=SUBSCRIBE_TIMEOUT_S)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)  # do not leave it connected
            raise
        sock = self._paho.socket()
        if sock is not None:
            # Only now replace aiomqtt's read callback with ours, which can pause: paused
            # earlier, a session's queued messages could keep the SUBACK unread. Until
            # the first ack, ReceiveMaximum bounds the intake.
            self._fileno = sock.fileno()
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._fileno)
            loop.add_reader(self._fileno, self._on_readable)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # already gone: nothing to close
            await self.client.__aexit__(exc_type, exc, tb)

    async def receive(self) -> Publish:
        """The next message, waiting for one; ``MqttError`` once the connection is lost.

        Cancelling it loses nothing: a message stays queued until it is returned.
        """
        disconnected = self.client._disconnected  # noqa: SLF001 - aiomqtt's connection-lost future
        while not self._received:
            if disconnected.done():
                cause = None if disconnected.cancelled() else disconnected.exception()
                raise aiomqtt.MqttError("Disconnected during message iteration") from cause
            self._arrival = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._arrival, disconnected}, return_when=asyncio.FIRST_COMPLETED)
        return self._received.popleft()

    def take_nowait(self) -> Publish | None:
        """The next message already received, or None; never waits."""
        return self._received.popleft() if self._received else None

    def ack(self, messages: Sequence[Publish]) -> None:
        """Acknowledge messages (PUBACK each, in order) after their batch committed.

        paho's ``ack(mid, qos)`` queues one packet per message, each a system call to
        write; the PUBACKs of a batch are instead queued as one run of bytes, which
        paho writes like any other packet (one queue entry, one ``send``).
        """
        pubacks = b"".join(_PUBACK.pack(paho.PUBACK, 2, m.mid) for m in messages if m.qos == QOS)
        if pubacks:
            self._paho._packet_queue(paho.PUBACK, pubacks, 0, QOS)  # noqa: SLF001

    def resume_if_drained(self) -> None:
        """Called after acknowledgements: read the socket again once below the cap."""
        if self._paused and self._room() > self._max_held // 2 and self.connected:  # a live socket
            self._paused = False
            if self._keepalive_timer is not None:
                self._keepalive_timer.cancel()
            loop = asyncio.get_running_loop()
            loop.add_reader(self._fileno, self._on_readable)
            loop.call_soon(self._on_readable)  # packets read before the pause

    def _room(self) -> int:
        """How many more messages may enter the process."""
        return self._max_held - self._held() - len(self._received)

    def _on_paho_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self._received.append(Publish(message.topic, bytes(message.payload), message.mid, message.qos))
        self._wake()

    def _wake(self) -> None:
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    def _on_readable(self) -> None:
        """One read of up to 64 KiB, split into packets; pauses at the cap."""
        if self._paused or self._paho.socket() is None:
            return
        try:
            self._read()
        except Exception as exc:  # noqa: BLE001 - a read error of any kind means the link is gone
            # Close the socket ourselves, or the loop would keep calling us.
            asyncio.get_running_loop().remove_reader(self._fileno)
            self._paho._sock_close()  # noqa: SLF001
            disconnected = self.client._disconnected  # noqa: SLF001
            if not disconnected.done():
                disconnected.set_exception(exc)
            return
        sock = self._paho.socket()
        if sock is None:
            return  # lost: paho closed it and told aiomqtt
        loop = asyncio.get_running_loop()
        if self._room() <= 0:
            self._paused = True
            loop.remove_reader(self._fileno)
            self._keepalive_timer = loop.call_later(self._keepalive_s / 2, self._hold_keepalive)
        elif isinstance(sock, ssl.SSLSocket) and sock.pending():
            loop.call_soon(self._on_readable)  # decrypted bytes raise no readiness event

    def _read(self) -> None:
        if self._paho._in_packet["command"]:  # noqa: SLF001
            # paho was part-way through a packet when we took the socket over.
            self._paho.loop_read()
            return
        self._dispatch()  # what a pause left unsplit
        if self._room() > 0 and self._paho.socket() is not None:
            self._receive()
            self._dispatch()

    def _receive(self) -> None:
        try:
            # paho's recv: TLS want-read/want-write become BlockingIOError, as it handles them.
            data = self._paho._sock_recv(READ_CHUNK)  # noqa: SLF001
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("mqtt_read_failed", error=str(exc))
            data = b""
        if not data:
            self._lose(paho.MQTT_ERR_CONN_LOST)
            return
        self._paho._last_bytes_received = paho.time_func()  # noqa: SLF001 - keepalive bookkeeping
        self._inbox += data

    def _dispatch(self) -> None:
        """Queue the complete PUBLISH packets (up to the cap), hand the rest to paho."""
        if not self._inbox:
            return
        try:
            frames = wire.split_packets(self._inbox, self._room())
        except wire.Malformed as exc:
            log.warning("mqtt_protocol_error", error=str(exc))
            self._lose(paho.MQTT_ERR_PROTOCOL)
            return
        del self._inbox[: frames.consumed]
        if frames.publishes:
            self._received.extend(frames.publishes)
            self._wake()
        for header, body in frames.others:
            rc = self._paho_handles(header, body)
            if rc != paho.MQTT_ERR_SUCCESS:
                self._lose(rc)
                return

    def _paho_handles(self, header: int, body: bytes) -> MQTTErrorCode:
        """Let paho process one packet as if its own reader had read it."""
        self._paho._in_packet = _in_packet(header, body)  # noqa: SLF001
        try:
            return self._paho._packet_handle()  # noqa: SLF001
        except MalformedPacket as exc:
            log.warning("mqtt_protocol_error", error=str(exc))
            return paho.MQTT_ERR_PROTOCOL
        finally:
            self._paho._in_packet = _in_packet()  # noqa: SLF001

    def _lose(self, rc: MQTTErrorCode) -> None:
        """Close the link as paho's own reader would on ``rc``; aiomqtt hears of it."""
        self._inbox.clear()
        self._paho._loop_rc_handle(rc)  # noqa: SLF001

    def _hold_keepalive(self) -> None:
        """While paused (say, the database is down), the broker's PINGRESPs go
        unread and paho would close a healthy link after two keepalive periods.
        Tell it the link is alive, so it keeps sending PINGREQs instead; a broker
        that is really gone still shows as failing writes."""
        if not self._paused or not self.connected:
            return
        self._paho._last_bytes_received = paho.time_func()  # noqa: SLF001
        self._paho._ping_t = 0  # noqa: SLF001
        self._keepalive_timer = asyncio.get_running_loop().call_later(self._keepalive_s / 2, self._hold_keepalive)
