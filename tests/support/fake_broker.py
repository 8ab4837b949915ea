"""An in-process MQTT v5 broker stand-in for the link tests: enough of the protocol
to connect, subscribe, push PUBLISH packets in whatever pieces a test chooses,
and record what the client sends back (PUBACKs, DISCONNECT properties)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Iterable
from typing import Final

from bridge.ingest.wire import Publish

__all__ = ["FakeBroker", "FakeSession", "publish_packet"]

CONNACK: Final = b"\x20\x03\x00\x00\x00"  # session not present, success, no properties
PINGRESP: Final = b"\xd0\x00"
SESSION_EXPIRY_PROPERTY: Final = 0x11


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def packet(header: int, body: bytes) -> bytes:
    return bytes([header]) + varint(len(body)) + body


def publish_packet(message: Publish) -> bytes:
    """A PUBLISH as a broker sends it (MQTT v5, no properties)."""
    topic = message.topic.encode()
    mid = struct.pack("!H", message.mid) if message.qos else b""
    body = struct.pack("!H", len(topic)) + topic + mid + b"\x00" + message.payload
    return packet(0x30 | message.qos << 1, body)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


class FakeSession:
    """One client connection as the broker sees it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.subscriptions: list[str] = []
        self.unsubscriptions: list[str] = []
        self.pubacks: list[int] = []
        self.disconnect_properties: bytes | None = None  # raw, once the client said goodbye
        self.subscribed = asyncio.Event()
        self.closed = asyncio.Event()
        self.suback_extra = b""  # bytes sent right behind the SUBACK, in the same write

    async def serve(self) -> None:
        try:
            while True:
                header = (await self._reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await self._reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                self._handle(header, await self._reader.readexactly(length))
                await self._writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            self._writer.close()

    def _handle(self, header: int, body: bytes) -> None:
        kind = header & 0xF0
        if kind == 0x10:  # CONNECT
            self._writer.write(CONNACK)
        elif kind == 0x80:  # SUBSCRIBE
            filters = self._filters(body, options=True)
            self.subscriptions += filters
            self._writer.write(packet(0x90, body[:2] + b"\x00" + b"\x01" * len(filters)) + self.suback_extra)
            self.subscribed.set()
        elif kind == 0xA0:  # UNSUBSCRIBE
            filters = self._filters(body, options=False)
            self.unsubscriptions += filters
            self._writer.write(packet(0xB0, body[:2] + b"\x00" + b"\x00" * len(filters)))
        elif kind == 0x40:  # PUBACK
            self.pubacks.append(struct.unpack("!H", body[:2])[0])
        elif kind == 0xC0:  # PINGREQ
            self._writer.write(PINGRESP)
        elif kind == 0xE0:  # DISCONNECT
            self.disconnect_properties = body[1:]  # after the reason code: properties, if any

    @staticmethod
    def _filters(body: bytes, *, options: bool) -> list[str]:
        properties, at = _read_varint(body, 2)
        at += properties
        found = []
        while at < len(body):
            (size,) = struct.unpack("!H", body[at : at + 2])
            found.append(body[at + 2 : at + 2 + size].decode())
            at += 2 + size + (1 if options else 0)
        return found

    def session_expiry_on_disconnect(self) -> int | None:
        """The SessionExpiryInterval the client's DISCONNECT carried, if any."""
        raw = self.disconnect_properties
        if not raw:
            return None
        length, at = _read_varint(raw, 0)
        end = at + length
        while at < end:
            identifier = raw[at]
            if identifier == SESSION_EXPIRY_PROPERTY:
                value: int = struct.unpack("!I", raw[at + 1 : at + 5])[0]
                return value
            at += 1 + 4  # the only property a test sends is this four-byte integer
        return None

    async def send(self, data: bytes, *, pieces: int = 1) -> None:
        """Write ``data`` in ``pieces`` writes, letting the client read between them."""
        step = max(1, -(-len(data) // pieces))
        for start in range(0, len(data), step):
            self._writer.write(data[start : start + step])
            await self._writer.drain()
            await asyncio.sleep(0.001)

    async def publish(self, messages: Iterable[Publish], *, pieces: int = 1) -> None:
        await self.send(b"".join(publish_packet(m) for m in messages), pieces=pieces)

    def drop(self) -> None:
        """Close the connection without a word (a broker restart, a cut cable)."""
        self._writer.transport.abort()


class FakeBroker:
    """Listens on 127.0.0.1; ``sessions`` in the order clients connected."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self.sessions: list[FakeSession] = []
        self._new_session = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.suback_extra = b""

    async def __aenter__(self) -> FakeBroker:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        for session in self.sessions:
            session.drop()
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = FakeSession(reader, writer)
        session.suback_extra = self.suback_extra
        self.sessions.append(session)
        self._new_session.set()
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        await session.serve()

    async def session(self, index: int = 0, timeout: float = 30) -> FakeSession:
        """The ``index``-th client connection, once it has subscribed."""
        async with asyncio.timeout(timeout):
            while len(self.sessions) <= index:
                self._new_session.clear()
                await self._new_session.wait()
            await self.sessions[index].subscribed.wait()
        return self.sessions[index]
