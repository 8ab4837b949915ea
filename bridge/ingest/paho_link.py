"""A paho-mqtt client driven by the asyncio loop, through paho's public
external-loop API (``socket``, ``loop_read``, ``loop_write``, ``loop_misc`` and the
socket callbacks), for one connection with a persistent MQTT v5 session and
manual acknowledgement.

What both readers share lives here: connecting and subscribing, the queue of
received messages, the read gate of the in-flight window, keepalive, presence,
and leaving a shared group without stranding anything.
Subclasses decide how the socket is read once subscribed and how messages are
acknowledged (bridge/ingest/fast_link.py, bridge/ingest/plain_link.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ssl
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge import clock
from bridge.config import Settings
from bridge.ingest.inflight import InflightWindow
from bridge.ingest.link import (
    QOS,
    LinkError,
    Publish,
    connect_properties,
    control_topic,
    subscription_filters,
    tls_options,
)
from bridge.ingest.presence import LEAVING, OFFLINE, ONLINE, State, announcement

__all__ = ["PahoLink"]

log = structlog.get_logger("bridge.ingest.link")

CONNECT_TIMEOUT_S = 10
# A long backlog can queue the SUBACK behind a receive window of messages.
SUBSCRIBE_TIMEOUT_S = 60
DISCONNECT_TIMEOUT_S = 10
MISC_INTERVAL_S = 1.0  # how often paho checks keepalive (as aiomqtt does)
MQTT_RECEIVE_MAXIMUM_LIMIT = 65535
NO_SUBSCRIPTION_EXISTED = 0x11  # UNSUBACK reason code (MQTT 5, 3.11.2.2)


class PahoLink:
    """One connection to the broker (see bridge.ingest.link.BrokerLink)."""

    def __init__(self, settings: Settings, window: InflightWindow, *, adopt: str | None = None) -> None:
        """A link for the daemon's own session; with ``adopt``, for the session of that
        client id instead (fleet-bridge adopt-session): no subscription, no presence."""
        mqtt = settings.mqtt
        self._settings = settings
        self._window = window
        self.address = f"{mqtt.host}:{mqtt.port}"
        self._adopting = adopt is not None
        self._client_id = adopt or mqtt.client_id
        self.marker_topic = control_topic("drain", self._client_id)
        self._presence_topic = control_topic("presence", self._client_id)
        self.session_present = False
        self._received: collections.deque[Publish] = collections.deque()
        self._arrival: asyncio.Future[None] | None = None  # set when _received gains messages
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._connected: asyncio.Future[None] = self._loop.create_future()
        self._disconnected: asyncio.Future[None] = self._loop.create_future()
        self._acks: dict[int, asyncio.Future[list[ReasonCode]]] = {}  # SUBACK/UNSUBACK by packet id
        self._published: dict[int, asyncio.Future[None]] = {}  # PUBACK by packet id
        self._fileno = -1
        self._gated = False  # True once subscribed (or adopting): reads then follow the window
        self._paused = False
        self._misc: asyncio.Task[None] | None = None
        self._stop_room_watch: Callable[[], None] | None = None
        self.client = self._make_client()

    def _make_client(self) -> paho.Client:
        mqtt = self._settings.mqtt
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self._client_id, protocol=MQTTProtocolVersion.MQTTv5
        )
        client.manual_ack_set(True)  # acknowledged after COMMIT, by ack()
        if mqtt.username is not None:
            client.username_pw_set(mqtt.username, self._settings.mqtt_password())
        options = tls_options(self._settings)
        if options is not None:
            client.tls_set(**options)
            client.tls_insecure_set(mqtt.tls_insecure)
        if not self._adopting:
            # A replica that dies says so to `fleet-bridge adopt-session`, through the broker.
            client.will_set(self._presence_topic, self._announcement(OFFLINE), qos=QOS, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_ack
        client.on_unsubscribe = self._on_ack
        client.on_publish = self._on_publish
        client.on_message = self._on_paho_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    # --- the BrokerLink interface -------------------------------------------------

    @property
    def connected(self) -> bool:
        # paho still says connected for a moment after some losses (a protocol
        # error, the broker's DISCONNECT); its socket is gone by then.
        return self.client.is_connected() and self.client.socket() is not None

    async def __aenter__(self) -> Self:
        await self.connect()
        try:
            if self._adopting:
                self._gate()
            else:
                self.client.publish(self._presence_topic, self._announcement(ONLINE), qos=QOS, retain=True)
                # Always subscribe: a no-op for a live session, a restore for a lost one.
                await self.subscribe(subscription_filters(self._settings))
        except BaseException:
            await self.close()  # do not leave it connected
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def receive(self) -> Publish:
        while not self._received:
            if self._disconnected.done():
                cause = None if self._disconnected.cancelled() else self._disconnected.exception()
                raise LinkError(f"lost the broker {self.address}") from cause
            self._arrival = self._loop.create_future()
            await asyncio.wait({self._arrival, self._disconnected}, return_when=asyncio.FIRST_COMPLETED)
        return self._received.popleft()

    def take_nowait(self) -> Publish | None:
        return self._received.popleft() if self._received else None

    def ack(self, messages: Sequence[Publish]) -> None:
        raise NotImplementedError

    # --- connecting, subscribing, leaving -----------------------------------------

    async def connect(self) -> None:
        """Open the socket and the MQTT v5 session (clean start off)."""
        mqtt = self._settings.mqtt
        receive_maximum = min(MQTT_RECEIVE_MAXIMUM_LIMIT, self._window.capacity)
        connect = functools.partial(
            self.client.connect, mqtt.host, mqtt.port, mqtt.keepalive_s,
            clean_start=False, properties=connect_properties(self._settings, receive_maximum),
        )  # fmt: skip
        try:
            # paho's connect() blocks on DNS and the TCP handshake: off the loop.
            await self._loop.run_in_executor(None, connect)
        except (OSError, ValueError, ssl.SSLError) as exc:
            self._drop_socket()
            raise LinkError(f"cannot connect to the broker {self.address}: {exc}") from exc
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), CONNECT_TIMEOUT_S)
        except TimeoutError:
            self._drop_socket()
            raise LinkError(f"the broker {self.address} did not answer CONNECT in {CONNECT_TIMEOUT_S} s") from None
        except LinkError:
            self._drop_socket()
            raise

    async def subscribe(self, filters: Sequence[str]) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK; then reads follow the window."""
        _, mid = self.client.subscribe([(f, SubscribeOptions(qos=QOS)) for f in filters])
        codes = await self._await_ack(mid, "SUBSCRIBE")
        refused = [f"{f} ({code})" for f, code in zip(filters, codes, strict=False) if code.is_failure]
        if refused:
            raise LinkError(f"the broker {self.address} refused the subscription to {', '.join(refused)}")
        self._gate()

    async def announce_leaving(self) -> None:
        info = self.client.publish(self._presence_topic, self._announcement(LEAVING), qos=QOS, retain=True)
        future: asyncio.Future[None] = self._loop.create_future()
        self._published[info.mid] = future
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await future
        finally:
            self._published.pop(info.mid, None)

    async def leave(self, token: str) -> list[str]:
        """Leave the shared group without stranding anything: UNSUBSCRIBE (the broker
        assigns nothing more to this session, and keeps what it already holds for it),
        then queue a marker behind what the session still holds, on a topic only this
        session subscribes to. Once the marker comes back, everything queued before it
        has been received (its payload is ``token``). Returns the filters that had
        no subscription in this session."""
        filters = subscription_filters(self._settings)
        _, mid = self.client.unsubscribe(filters)
        codes = await self._await_ack(mid, "UNSUBSCRIBE")
        missing = [f for f, code in zip(filters, codes, strict=False) if code.value == NO_SUBSCRIPTION_EXISTED]
        await self.subscribe([self.marker_topic])
        self.client.publish(self.marker_topic, token, qos=QOS)
        return missing

    def _gate(self) -> None:
        """From now on the window decides when the socket is read."""
        if not self._gated:
            self._gated = True
            self._stop_room_watch = self._window.on_room(self._resume)
            self._on_gated()

    async def close(self, *, end_session: bool = False) -> None:
        """Disconnect; ``end_session`` also ends the session at the broker (session
        expiry 0), with whatever it still holds. Messages received but not taken
        leave the window: the broker redelivers them to the next session."""
        if self.connected:
            if not self._adopting:
                # A normal DISCONNECT suppresses the will: say it ourselves.
                self.client.publish(self._presence_topic, self._announcement(OFFLINE), qos=QOS, retain=True)
            properties = None
            if end_session:
                properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = 0
            self.client.disconnect(properties=properties)
            with contextlib.suppress(TimeoutError, LinkError):
                await asyncio.wait_for(asyncio.shield(self._disconnected), DISCONNECT_TIMEOUT_S)
        self._drop_socket()
        if self._stop_room_watch is not None:
            self._stop_room_watch()
            self._stop_room_watch = None
        self._window.release(len(self._received))
        self._received.clear()

    async def _await_ack(self, mid: int | None, what: str) -> list[ReasonCode]:
        """The reason codes of the SUBACK or UNSUBACK for packet ``mid``."""
        if mid is None:
            raise LinkError(f"cannot send {what} to the broker {self.address}: not connected")
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._acks[mid] = future
        waiting: set[asyncio.Future[Any]] = {future, self._disconnected}
        try:
            await asyncio.wait(waiting, timeout=SUBSCRIBE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._acks.pop(mid, None)
        if future.done():
            return future.result()
        if self._disconnected.done():
            raise LinkError(f"lost the broker {self.address} while waiting for the answer to {what}")
        raise LinkError(f"the broker {self.address} did not answer {what} in {SUBSCRIBE_TIMEOUT_S} s")

    def _drop_socket(self) -> None:
        """Close the socket, telling the broker when the socket lets us, and mark
        the link as gone."""
        if self.client.socket() is not None:
            self.client.disconnect()
            with contextlib.suppress(Exception):
                self.client.loop_write()  # writes DISCONNECT and closes, unless it would block
        sock = self.client.socket()
        if sock is not None and sock.fileno() >= 0:
            # The write would block (a broker that stopped reading): nobody is going to
            # finish it, so close the socket here.
            self._loop.remove_reader(sock.fileno())
            self._loop.remove_writer(sock.fileno())
            sock.close()
        if self._misc is not None:
            self._misc.cancel()
        if not self._disconnected.done():
            self._disconnected.set_result(None)

    def _announcement(self, state: State) -> bytes:
        return announcement(state, self._settings.mqtt.shared_group)

    # --- paho callbacks -----------------------------------------------------------

    def _on_connect(
        self, _client: paho.Client, _userdata: Any, flags: Any, reason: ReasonCode, _props: Properties | None
    ) -> None:
        if self._connected.done():
            return
        if reason.is_failure:
            self._connected.set_exception(LinkError(f"the broker {self.address} refused the connection: {reason}"))
        else:
            self.session_present = bool(flags.session_present)
            self._connected.set_result(None)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Properties | None
    ) -> None:
        if not self._connected.done():
            self._connected.set_exception(LinkError(f"the broker {self.address} closed the connection: {reason}"))
        if not self._disconnected.done():
            if reason.is_failure:
                self._disconnected.set_exception(LinkError(f"lost the broker {self.address}: {reason}"))
            else:
                self._disconnected.set_result(None)

    def _on_ack(
        self, _client: paho.Client, _userdata: Any, mid: int, codes: list[ReasonCode], _props: Properties | None
    ) -> None:
        future = self._acks.get(mid)
        if future is not None and not future.done():
            future.set_result(codes)

    def _on_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, _reason: ReasonCode, _props: Properties | None
    ) -> None:
        future = self._published.get(mid)
        if future is not None and not future.done():
            future.set_result(None)

    def _on_paho_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self._queue([Publish(message.topic, bytes(message.payload), message.mid, message.qos, clock.now())])

    def _queue(self, messages: list[Publish]) -> None:
        self._received.extend(messages)
        self._window.acquire(len(messages))
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)

    def _in_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback`` on the event loop: paho calls the socket callbacks from the
        thread that runs connect() too, and from the loop itself afterwards (there a
        direct call spares waking the loop through its self-pipe)."""
        if threading.get_ident() == self._loop_thread:
            callback(*args)
        else:
            self._loop.call_soon_threadsafe(callback, *args)

    def _on_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._fileno = sock.fileno()
        self._in_loop(self._loop.add_reader, self._fileno, self._on_readable)
        self._in_loop(self._start_misc)

    def _on_socket_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._fileno >= 0:
            self._loop.remove_reader(self._fileno)
        if self._misc is not None:
            self._misc.cancel()

    def _on_register_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._in_loop(self._loop.add_writer, sock.fileno(), self._on_writable)

    def _on_unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._loop.remove_writer(sock.fileno())

    def _start_misc(self) -> None:
        self._misc = self._loop.create_task(self._misc_loop())

    async def _misc_loop(self) -> None:
        """paho's keepalive: PINGREQ when the link is quiet, loss when no answer comes."""
        while True:
            if self._paused:
                self._hold_keepalive()
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            await asyncio.sleep(MISC_INTERVAL_S)

    def _on_writable(self) -> None:
        try:
            self.client.loop_write()
        except Exception as exc:  # noqa: BLE001 - a write error of any kind means the link is gone
            self._lost(exc)

    def _write_now(self) -> None:
        """Write what paho has queued (acknowledgements) at once instead of on the
        next loop iteration: one wake-up less per batch. What the socket does not
        take now, the write callback finishes."""
        if self.client.socket() is not None:
            self._on_writable()

    # --- reading, and the read gate -----------------------------------------------

    def _on_readable(self) -> None:
        if self._paused or self.client.socket() is None:
            return
        try:
            self._read()
        except Exception as exc:  # noqa: BLE001 - a read error of any kind means the link is gone
            self._lost(exc)
            return
        sock = self.client.socket()
        if sock is None:
            return  # lost: paho closed it and reported it
        if self._gated and self._window.room <= 0:
            self._paused = True
            self._loop.remove_reader(self._fileno)
        elif isinstance(sock, ssl.SSLSocket) and sock.pending():
            self._loop.call_soon(self._on_readable)  # decrypted bytes raise no readiness event

    def _resume(self) -> None:
        """The window drained: read the socket again."""
        if self._paused and self.connected:
            self._paused = False
            self._loop.add_reader(self._fileno, self._on_readable)
            self._loop.call_soon(self._on_readable)  # what was read before the pause

    def _lost(self, exc: BaseException) -> None:
        if not self._disconnected.done():
            self._disconnected.set_exception(LinkError(f"lost the broker {self.address}: {exc}"))
        self._drop_socket()

    # --- what the readers decide --------------------------------------------------

    def _read(self) -> None:
        """Read what the socket has (at most what the window allows, once gated)."""
        raise NotImplementedError

    def _on_gated(self) -> None:
        """Called once reads follow the window (the subscription stands)."""

    def _hold_keepalive(self) -> None:
        """Called while paused, before paho checks keepalive."""
