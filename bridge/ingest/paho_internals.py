"""Every use of paho-mqtt's private attributes, in one place.

The fast reader (bridge/ingest/fast_link.py) reads the broker socket itself, 64 KiB
at a time, turns PUBLISH packets into ``Publish`` tuples (bridge/ingest/wire.py)
and hands every other packet to paho, which keeps the protocol state; it writes a
batch's PUBACKs as one run of bytes. None of that is public paho API, so:

* each private attribute it touches is named in ``PRIVATE_ATTRIBUTES`` and used
  only through the functions below;
* ``VERIFIED_PAHO`` lists the paho-mqtt releases (major, minor) this was checked
  against, and tests/test_paho_internals.py checks each attribute on the
  installed paho;
* ``fast_reader_refusal`` says why the fast reader must not be used (another paho
  release, or an attribute gone); the daemon then runs the plain reader
  (bridge/ingest/plain_link.py), which uses paho's public API only.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Final

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

__all__ = [
    "PRIVATE_ATTRIBUTES",
    "VERIFIED_PAHO",
    "fast_reader_refusal",
    "handle_packet",
    "hold_keepalive",
    "installed_paho",
    "lose",
    "mid_packet",
    "missing_attributes",
    "note_bytes_received",
    "queue_raw",
    "recv",
]

VERIFIED_PAHO: Final = ((2, 1), (2, 2))

# What each private attribute is used for.
PRIVATE_ATTRIBUTES: Final = {
    "_sock_recv": "recv() that turns TLS want-read/want-write into BlockingIOError as paho's reader does",
    "_in_packet": "paho's reader state: a packet it was part-way through, and one packet handed to it",
    "_packet_handle": "processes one non-PUBLISH packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, ...)",
    "_loop_rc_handle": "closes the link as paho's own reader does on an error code",
    "_packet_queue": "queues a batch's PUBACKs as one run of bytes",
    "_last_bytes_received": "keepalive bookkeeping: reads made by the fast reader count as traffic",
    "_ping_t": "keepalive: a paused reader cannot read the PINGRESP paho waits for",
}
# The keys of paho's reader state that _in_packet() below fills in.
IN_PACKET_KEYS: Final = frozenset(
    {"command", "have_remaining", "remaining_count", "remaining_mult", "remaining_length", "packet", "to_process",
     "pos"}
)  # fmt: skip


def installed_paho() -> str:
    return metadata.version("paho-mqtt")


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else None


def missing_attributes(client: paho.Client) -> list[str]:
    """The private attributes (and reader-state keys) this paho client lacks."""
    missing = [name for name in PRIVATE_ATTRIBUTES if not hasattr(client, name)]
    state = getattr(client, "_in_packet", None)
    if isinstance(state, dict) and not state.keys() >= IN_PACKET_KEYS:
        missing.append(f"_in_packet[{', '.join(sorted(IN_PACKET_KEYS - state.keys()))}]")
    return missing


def fast_reader_refusal(version: str, missing: list[str]) -> str | None:
    """Why the fast reader must not run with this paho, or None when it may."""
    if _major_minor(version) not in VERIFIED_PAHO:
        verified = ", ".join(f"{major}.{minor}" for major, minor in VERIFIED_PAHO)
        return f"paho-mqtt {version} is not a verified release ({verified})"
    if missing:
        return f"paho-mqtt {version} lacks {', '.join(missing)}"
    return None


def recv(client: paho.Client, size: int) -> bytes:
    return client._sock_recv(size)  # noqa: SLF001


def mid_packet(client: paho.Client) -> bool:
    """Whether paho's own reader stopped part-way through a packet."""
    return bool(client._in_packet["command"])  # noqa: SLF001


def _in_packet(header: int = 0, body: bytes = b"") -> paho._InPacket:
    """paho's reader state: idle (``header`` 0, as it leaves it between packets) or
    holding one whole packet, ready for its ``_packet_handle``."""
    return {
        "command": header, "have_remaining": 1 if header else 0, "remaining_count": [], "remaining_mult": 1,
        "remaining_length": len(body), "packet": bytearray(body), "to_process": 0, "pos": 0,
    }  # fmt: skip


def handle_packet(client: paho.Client, header: int, body: bytes) -> MQTTErrorCode:
    """Let paho process one packet as if its own reader had read it; raises paho's
    MalformedPacket on a broken one."""
    client._in_packet = _in_packet(header, body)  # noqa: SLF001
    try:
        return client._packet_handle()  # noqa: SLF001
    finally:
        client._in_packet = _in_packet()  # noqa: SLF001


def lose(client: paho.Client, rc: MQTTErrorCode) -> None:
    """Close the link as paho's own reader would on ``rc`` (it reports the loss)."""
    client._loop_rc_handle(rc)  # noqa: SLF001


def queue_raw(client: paho.Client, command: int, data: bytes) -> None:
    """Queue ready-made packet bytes for paho to write like any packet of its own."""
    client._packet_queue(command, data, 0, 0)  # noqa: SLF001


def note_bytes_received(client: paho.Client) -> None:
    client._last_bytes_received = paho.time_func()  # noqa: SLF001


def hold_keepalive(client: paho.Client) -> None:
    """While the reader is paused, the broker's PINGRESPs go unread and paho would
    close a healthy link after two keepalive periods: tell it the link is alive, so
    it keeps sending PINGREQs instead (a broker that is really gone still shows as
    failing writes)."""
    client._last_bytes_received = paho.time_func()  # noqa: SLF001
    client._ping_t = 0  # noqa: SLF001
