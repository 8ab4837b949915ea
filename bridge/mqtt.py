"""The broker side: one MQTT v5 connection with a persistent session, manual
acknowledgement after COMMIT, and a read gate that bounds the messages held in
the process whatever the broker's backlog.

aiomqtt 2.5 has no public API for what follows, so
this module (and only this module) reaches into it:

* manual acknowledgement (aiomqtt PR #346 is still open): paho's
  ``manual_ack_set(True)`` before connecting and ``ack(mid, qos)`` after COMMIT;
* pausing socket reads: Mosquitto 2.0 stops honouring ReceiveMaximum once acks
  start flowing and pushes its whole queue, so the process must stop reading
  the socket while too many messages wait in it (TCP back-pressure then keeps
  the backlog in the broker);
* non-blocking reads of its message queue (``take_nowait``) and buffered socket
  reads (``_BufferedSocket``): the per-message cost when draining a backlog
  (see also bridge/fastdecode.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge import fastdecode
from bridge.config import Settings

__all__ = ["BrokerConnection", "subscription_filters"]

log = structlog.get_logger("bridge.mqtt")

QOS = 1
_PUBACK = struct.Struct("!BBH")  # fixed header, remaining length 2, message id
READ_CHUNK = 65536
READ_BURST = 500  # packets parsed per event-loop turn at most
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


class _BufferedSocket:
    """Serves paho's small reads from one large ``recv``.

    paho reads each packet in three or four ``recv`` calls (type byte, length
    bytes, body), each a system call and an event-loop wake-up. Reading 64 KiB at
    once and handing it out from memory lets one wake-up drain every message in
    the buffer. ``pending()`` tells the read loop that buffered bytes remain, as
    it does for TLS sockets. Everything but ``recv`` goes to the real socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = memoryview(b"")

    def recv(self, size: int) -> bytes:
        if not self._buffer:
            data = self._sock.recv(READ_CHUNK)  # BlockingIOError when drained; b"" at EOF
            if not data:
                return data
            self._buffer = memoryview(data)
        chunk = bytes(self._buffer[:size])
        self._buffer = self._buffer[size:]
        return chunk

    def pending(self) -> int:
        return len(self._buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BrokerConnection:
    """One connection to the broker. A fresh instance per connection, so message
    ids of a dead connection are never acknowledged on a new one."""

    def __init__(self, settings: Settings, *, receive_maximum: int, held: Callable[[], int], max_held: int) -> None:
        """``held()`` counts the messages taken from this client and not yet acknowledged."""
        self._settings = settings
        self._held = held
        self._max_held = max_held
        self._paused = False
        self._fileno = -1
        self._keepalive_s = settings.mqtt.keepalive_s
        self._keepalive_timer: asyncio.TimerHandle | None = None
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
        fastdecode.install()

    @property
    def connected(self) -> bool:
        return self._paho.is_connected()

    @property
    def queued(self) -> int:
        """Messages received by the client library but not yet taken by us."""
        return len(self.client.messages)

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
            # Only now replace aiomqtt's read callback with one that can pause (see the
            # module docstring): paused earlier, a session's queued messages could keep
            # the SUBACK unread. Until the first ack, ReceiveMaximum bounds the intake.
            self._fileno = sock.fileno()
            if isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket):
                self._paho._sock = _BufferedSocket(sock)  # noqa: SLF001 - see _BufferedSocket
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._fileno)
            loop.add_reader(self._fileno, self._on_readable)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # already gone: nothing to close
            await self.client.__aexit__(exc_type, exc, tb)

    def take_nowait(self) -> aiomqtt.Message | None:
        """The next message already received, or None; never waits.

        Only call it while no ``anext(client.messages)`` is pending, or messages
        could be taken out of order.
        """
        queue = self.client._queue  # noqa: SLF001 - aiomqtt has no non-blocking read
        return None if queue.empty() else queue.get_nowait()

    def ack(self, messages: Sequence[aiomqtt.Message]) -> None:
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
        if self._paused and self._total_held() < self._max_held // 2 and self.connected:
            self._paused = False
            if self._keepalive_timer is not None:
                self._keepalive_timer.cancel()
            loop = asyncio.get_running_loop()
            loop.add_reader(self._fileno, self._on_readable)
            loop.call_soon(self._on_readable)  # bytes buffered before the pause

    def _total_held(self) -> int:
        return self._held() + self.queued

    def _buffered(self) -> int:
        """Bytes read from the socket but not yet parsed: they raise no readiness event."""
        sock = self._paho.socket()
        return sock.pending() if isinstance(sock, ssl.SSLSocket | _BufferedSocket) else 0

    def _on_readable(self) -> None:
        # Mirrors aiomqtt's own reader (client.py, _on_socket_open) plus the gate, and
        # yields to the event loop every READ_BURST packets so intake and commits run.
        if self._paused or self._paho.socket() is None:
            return
        try:
            for _ in range(READ_BURST):
                self._paho.loop_read()
                if not self._buffered() or self._total_held() >= self._max_held:
                    break
        except Exception as exc:  # noqa: BLE001 - any read error means the link is gone
            # paho may not have closed the socket (an unexpected exception rather
            # than an error code): close it, or the loop would keep calling us.
            asyncio.get_running_loop().remove_reader(self._fileno)
            self._paho._sock_close()  # noqa: SLF001
            disconnected = self.client._disconnected  # noqa: SLF001
            if not disconnected.done():
                disconnected.set_exception(exc)
            return
        loop = asyncio.get_running_loop()
        if self._total_held() >= self._max_held:
            self._paused = True
            loop.remove_reader(self._fileno)
            self._keepalive_timer = loop.call_later(self._keepalive_s / 2, self._hold_keepalive)
        elif self._buffered():
            loop.call_soon(self._on_readable)

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
