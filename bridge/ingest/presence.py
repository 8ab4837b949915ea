"""Replica presence, through the broker.

Each replica announces itself, retained, on ``fleet-bridge/presence/<client id>``:
``{"state": "online", "group": ...}`` when it connects, ``"offline"`` when it
leaves, and the broker says ``"offline"`` for it when it dies (its will). Two
decisions read it:

* ``fleet-bridge adopt-session`` refuses to take over a session that is in use
  (announced ``online`` or ``leaving``);
* a replica leaving a shared group first says ``leaving``, then stays subscribed
  when no other member is ``online``: a group nobody is subscribed to has its
  readings dropped by the broker, while a session that stays subscribed keeps
  queueing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Final, Literal
from urllib.parse import unquote

import orjson

from bridge.config import Settings
from bridge.ingest.link import control_topic, side_client

__all__ = [
    "LEAVING",
    "OFFLINE",
    "ONLINE",
    "State",
    "announcement",
    "group_members_online",
    "presence_of",
    "read_presence",
]

ONLINE: Final = "online"
LEAVING: Final = "leaving"  # still connected, about to leave its shared group
OFFLINE: Final = "offline"
State = Literal["online", "leaving", "offline"]
# Retained messages come right behind the SUBACK; missing a slow one errs on the
# safe side (an adoption refused, a session kept).
WAIT_S: Final = 1.5


def announcement(state: State, group: str | None) -> bytes:
    return orjson.dumps({"state": state, "group": group})


async def read_presence(settings: Settings) -> dict[str, tuple[str, str | None]]:
    """Every replica's last announcement: client id -> (state, group)."""
    prefix = control_topic("presence", "")
    found: dict[str, tuple[str, str | None]] = {}
    async with side_client(settings, f"presence-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(prefix + "+", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT_S):
                async for message in client.messages:
                    state, group = _parse(message.payload)
                    found[unquote(message.topic.value[len(prefix) :])] = (state, group)
    return found


def _parse(payload: object) -> tuple[str, str | None]:
    try:
        doc = orjson.loads(payload if isinstance(payload, bytes | bytearray | str) else b"")
    except orjson.JSONDecodeError:
        return "unknown", None
    if not isinstance(doc, dict):
        return "unknown", None
    group = doc.get("group")
    return str(doc.get("state")), group if isinstance(group, str) else None


async def presence_of(settings: Settings, client_id: str) -> str | None:
    """``online``/``offline`` as ``client_id`` last announced it, or None."""
    found = (await read_presence(settings)).get(client_id)
    return found[0] if found else None


async def group_members_online(settings: Settings) -> int:
    """How many other replicas of this one's shared group say they are online."""
    me, group = settings.mqtt.client_id, settings.mqtt.shared_group
    return sum(
        1 for client_id, (state, of) in (await read_presence(settings)).items()
        if client_id != me and of == group and state == ONLINE
    )  # fmt: skip
