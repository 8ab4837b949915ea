"""What the broker holds for a client id: a raw MQTT v5 CONNECT that reads the
CONNACK's "session present" flag and hangs up, taking no message."""

from __future__ import annotations

import socket
import struct

from tests.support.fake_broker import packet

SESSION_EXPIRY = 0x11
KEEP_S = 7 * 24 * 3600


def session_present(host: str, port: int, client_id: str, *, end: bool) -> bool:
    """Whether the broker holds a session for ``client_id``. The probe takes the
    session over for a moment and leaves without a DISCONNECT: with ``end`` its
    expiry is set to 0, so the broker deletes it; otherwise it is kept (7 days) and
    nothing in it is acknowledged."""
    name = client_id.encode()
    properties = bytes([SESSION_EXPIRY]) + struct.pack("!I", 0 if end else KEEP_S)
    variable = b"\x00\x04MQTT\x05" + b"\x00" + struct.pack("!H", 30) + bytes([len(properties)]) + properties
    connect = packet(0x10, variable + struct.pack("!H", len(name)) + name)
    with socket.create_connection((host, port), timeout=10) as sock, sock.makefile("rb") as stream:
        sock.sendall(connect)
        header = stream.read(2)
        assert header[0] == 0x20, f"expected CONNACK, got {header!r}"
        flags, reason = stream.read(2)
        assert reason == 0, f"CONNACK refused: reason {reason}"
        return bool(flags & 0x01)
