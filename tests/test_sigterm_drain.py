"""SIGTERM, as systemd (KillSignal=SIGTERM) and Kubernetes send it, and SIGHUP, while
readings flow: the daemon drains and exits 0 within the unit's TimeoutStopSec, and
nothing is lost."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg
import orjson
import pytest

from bridge import clock
from tests.support.helpers import BridgeProcess, meter_payload, publish_async, vehicle_payload, wait_for
from tests.support.systemd_unit import timeout_stop_s

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow, pytest.mark.clock]

DEVICES = 25  # meters and as many vehicles: 50 readings a chunk


Key = tuple[str, datetime]


def chunk(prefix: str, n: int, start: datetime) -> tuple[list[tuple[str, bytes]], set[Key]]:
    """Chunk ``n``: one reading per device, all at ``start + n`` seconds, and their keys."""
    ts = start + timedelta(seconds=n)
    devices = [("meter", f"MTR-{d:05d}") for d in range(DEVICES)] + [("vehicle", f"EV-{d:05d}") for d in range(DEVICES)]
    payload = {"meter": meter_payload, "vehicle": vehicle_payload}
    messages = [(f"{prefix}{stream}/{device}", payload[stream](ts, seq=n)) for stream, device in devices]
    return messages, {(device, ts) for _, device in devices}


async def stored(db: asyncpg.Connection, schema: str) -> set[Key]:
    rows = await db.fetch(
        f'SELECT meter_id AS id, recorded_at FROM "{schema}".meter_telemetry_history'
        f' UNION ALL SELECT vehicle_id, recorded_at FROM "{schema}".vehicle_telemetry_history'
    )
    return {(r["id"], r["recorded_at"]) for r in rows}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
async def test_sigterm_while_readings_flow_drains_exits_0_within_timeout_stop_sec_and_loses_nothing(
    signum: int,
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """A publisher keeps sending while the bridge gets SIGTERM. The bridge exits with
    code 0 before the unit's TimeoutStopSec (when systemd would SIGKILL it). What it
    had taken is committed; what the broker still held, or received after the exit,
    waits in the bridge's persistent session: a restarted bridge with the same
    client id stores it, so every published reading ends up in history exactly.
    SIGHUP (a closed terminal, or a reload request) stops the bridge the same way."""
    bound = timeout_stop_s()
    start = clock.now().replace(microsecond=0) - timedelta(hours=1)
    bridge = start_bridge()
    await bridge.wait_ready()

    expected: set[Key] = set()
    chunks = 0
    keep_publishing = asyncio.Event()
    keep_publishing.set()

    async def publish_chunk() -> None:
        nonlocal chunks
        messages, keys = chunk(prefix, chunks, start)
        await publish_async(*broker, messages)
        expected.update(keys)
        chunks += 1

    async def publish_until_told() -> None:
        while keep_publishing.is_set():
            await publish_chunk()

    publisher = asyncio.create_task(publish_until_told())

    async def flowing() -> bool:
        return len(await stored(db, schema)) >= 10 * 2 * DEVICES

    await wait_for(flowing, timeout=60, what="the bridge to store ten chunks")
    assert not publisher.done()  # readings are still being published

    bridge.signal(signum)
    signalled = time.monotonic()
    exit_code = await asyncio.to_thread(bridge.wait, bound)  # raises TimeoutExpired past the bound
    drain_s = time.monotonic() - signalled
    keep_publishing.clear()
    await publisher
    # One more chunk while no bridge runs: the broker must keep it for the session.
    await publish_chunk()

    assert exit_code == 0, bridge.logs()[-3000:]
    assert drain_s < bound
    stops = [orjson.loads(line) for line in bridge.logs().splitlines() if '"event": "stopping"' in line]
    assert [stop["signal"] for stop in stops] == [signal.Signals(signum).name]
    assert '"event": "bridge_stopped"' in bridge.logs()
    assert len(await stored(db, schema)) < len(expected) == chunks * 2 * DEVICES

    restarted = start_bridge()  # same client id: the same persistent session
    await restarted.wait_ready()

    async def all_stored() -> bool:
        return len(await stored(db, schema)) >= len(expected)

    await wait_for(all_stored, timeout=120, what=f"{len(expected)} readings after the restart")
    assert await stored(db, schema) == expected
