"""``fleet-bridge adopt-session CLIENT_ID``: recover what a replica that will not come
back left in its MQTT session (node lost, then scaled down).

It connects with that client id (clean start off), stops the shared group from
assigning the session anything more, stores and acknowledges everything the
session holds with the daemon's guarantees, then ends the session. It refuses
while that client id is connected (bridge/ingest/presence.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys

from bridge.config import Settings
from bridge.errors import EXIT_FAILURE, EXIT_OK
from bridge.ingest.intake import Outcome
from bridge.ingest.presence import LEAVING, ONLINE, presence_of
from bridge.ingest.service import adopt_session
from bridge.metrics import Metrics

__all__ = ["add_adopt_arguments", "cmd_adopt_session"]

PROGRESS_EVERY_S = 5.0
ADOPT_TIMEOUT_S = 600.0  # a session can hold an hour of a replica's share


def _stored(metrics: Metrics) -> tuple[int, int, int]:
    """(rows stored, duplicates, rejects) counted so far."""
    registry = metrics.registry

    def total(name: str) -> int:
        return int(sum(s.value for family in registry.collect() for s in family.samples if s.name == name))

    return (
        total("fleet_bridge_rows_written_total"),
        total("fleet_bridge_duplicates_total"),
        total("fleet_bridge_messages_rejected_total"),
    )


async def _progress(metrics: Metrics, client_id: str) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        stored, duplicates, rejected = _stored(metrics)
        print(f"adopting {client_id}: {stored:,} stored, {duplicates:,} duplicates, {rejected:,} rejects so far",
              file=sys.stderr, flush=True)  # fmt: skip


def add_adopt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("client_id", metavar="CLIENT_ID", help="the client id of the replica that will not return")
    parser.add_argument(
        "--timeout", type=float, default=ADOPT_TIMEOUT_S, metavar="SECONDS",
        help=f"give up (keeping the session) after this long (default {ADOPT_TIMEOUT_S:g})",
    )  # fmt: skip


async def cmd_adopt_session(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the session is gone, 1 when it was kept (or refused)."""
    client_id: str = args.client_id
    broker = f"{settings.mqtt.host}:{settings.mqtt.port}"
    if client_id == settings.mqtt.client_id:
        print(f"fleet-bridge adopt-session: {client_id} is this configuration's own client id "
              "(FLEET_BRIDGE_MQTT_CLIENT_ID); run it with another one", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    if await presence_of(settings, client_id) in (ONLINE, LEAVING):
        print(f"fleet-bridge adopt-session: {client_id} is connected to the broker {broker}; "
              "adopting its session would take it over: stop that replica first", file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    metrics = Metrics()
    progress = asyncio.create_task(_progress(metrics, client_id))
    draining = dataclasses.replace(settings, mqtt=dataclasses.replace(settings.mqtt, drain_timeout_s=args.timeout))
    try:
        ended = await adopt_session(draining, client_id, stop, metrics) is Outcome.ENDED
    finally:
        progress.cancel()
    stored, duplicates, rejected = _stored(metrics)
    done = f"{stored:,} readings stored, {duplicates:,} already stored, {rejected:,} rejects"
    if ended:
        print(f"session {client_id} at {broker}: {done}; the session is ended")
        return EXIT_OK
    print(f"session {client_id} at {broker}: {done}; the session is KEPT with what was not stored "
          "(see the log); run adopt-session again", file=sys.stderr)  # fmt: skip
    return EXIT_FAILURE
