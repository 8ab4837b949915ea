"""The roll-up with the real daemon, the real commands and a real broker: late readings
into rolled-up hours and a mapping change are reflected exactly, at once in the
report and after the next pass in the tables; two replicas' loops and manual passes
at the same time neither double count nor deadlock, and ingest keeps flowing."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from bridge import clock
from bridge.analytics.pairing import floor_hour
from bridge.analytics.report import fleet_report
from tests.support.efficiency import assert_report_exact, assert_table_exact, rolled_up
from tests.support.fleet_data import fleet_messages, history_total, publish_paced, wait_stored_exactly, with_faults
from tests.support.helpers import BridgeProcess, meter_payload, publish_async, run_cli, vehicle_payload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.clock]

HOUR = timedelta(hours=1)
S = timedelta(seconds=1)


async def fleet_bridge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = await asyncio.to_thread(run_cli, args, env)
    assert done.returncode == 0, done.stderr
    return done


async def wait_rows(db: asyncpg.Connection, schema: str, rows: int) -> None:
    async def stored() -> bool:
        return await history_total(db, schema) == rows

    await wait_for(stored, timeout=60, what=f"{rows} readings in history")


@pytest.mark.slow
async def test_late_readings_and_a_mapping_change_are_exact_at_once_and_after_the_next_pass(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    bridge_env: dict[str, str],
    start_bridge: Callable[..., BridgeProcess],
    tmp_path: Path,
) -> None:
    """Readings for two closed hours, then `fleet-bridge rollup`: the tables equal the
    live query. Late readings into a rolled-up hour (a new pair, a meter reading
    nearer to a vehicle reading than the one it was paired with, a duplicate) make
    the stored hour stale, yet the report equals the live query as soon as they are
    stored; after the next pass the tables do too. Then a mapping change: exact at
    once, and in the tables after a pass."""
    mapping = tmp_path / "mapping.csv"
    mapping.write_text("vehicle_id,meter_id\nEV-1,MTR-1\nEV-2,MTR-2\n")
    await fleet_bridge(bridge_env, "mapping", "import", str(mapping))
    bridge = start_bridge(FLEET_BRIDGE_ROLLUP_INTERVAL_S="0")
    await bridge.wait_ready()
    h = floor_hour(clock.now()) - 3 * HOUR
    window = (h - HOUR, h + 3 * HOUR)

    def pair(vehicle: int, at: datetime, meter_offset: timedelta, dc: float, ac: float) -> list[tuple[str, bytes]]:
        return [
            (f"{prefix}vehicle/EV-{vehicle}", vehicle_payload(at, dc)),
            (f"{prefix}meter/MTR-{vehicle}", meter_payload(at + meter_offset, ac)),
        ]

    first = [
        *pair(1, h + timedelta(minutes=5), S, 0.45, 0.5),
        *pair(2, h + timedelta(minutes=10), 3 * S, 0.9, 1.0),
        *pair(1, h + HOUR - 2 * S, 4 * S, 0.3, 0.4),  # pairs across the hour boundary
        *pair(2, h + HOUR + timedelta(minutes=30), -S, 0.7, 0.8),
    ]
    await publish_async(*broker, first)
    await wait_rows(db, schema, len(first))
    out = (await fleet_bridge(bridge_env, "rollup")).stdout
    assert "rolled up" in out
    await assert_table_exact(db, schema, *window)

    late = [
        *pair(1, h + timedelta(minutes=20), S, 0.2, 0.25),  # a new pair
        (f"{prefix}meter/MTR-2", meter_payload(h + timedelta(minutes=10, seconds=1), 2.0)),  # nearer than +3 s
        first[0],  # a duplicate
    ]
    await publish_async(*broker, late)
    await wait_rows(db, schema, len(first) + 3)
    await assert_report_exact(db, schema, *window)
    assert await rolled_up(db, schema, *window) != await fleet_report(db, schema, *window, live=True)

    await fleet_bridge(bridge_env, "rollup")
    await assert_table_exact(db, schema, *window)

    mapping.write_text("vehicle_id,meter_id\nEV-1,MTR-2\nEV-2,MTR-2\n")
    await fleet_bridge(bridge_env, "mapping", "import", str(mapping))
    await assert_report_exact(db, schema, *window)
    await fleet_bridge(bridge_env, "rollup")
    await assert_table_exact(db, schema, *window)


@pytest.mark.slow
async def test_two_replicas_loops_and_manual_passes_neither_double_count_nor_deadlock(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    uid: str,
    broker: tuple[str, int],
    bridge_env: dict[str, str],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """Two replicas in a shared group, each running its roll-up loop every half second
    with no settle delay, while 4,800 readings of two past hours (plus duplicates and
    disorder) arrive and `fleet-bridge rollup` runs four times alongside (one over a
    range): every reading is stored exactly once, no write ever failed (a deadlock
    would show as a retried transient error), the loops did roll up, and after a last
    pass both tables equal the live query."""
    start = floor_hour(clock.now()) - 3 * HOUR
    messages, truth = fleet_messages(prefix, devices=20, readings_each=120, start=start)
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)',
        [(f"EV-{d:05d}", f"MTR-{d:05d}") for d in range(20)],
    )
    loop = {"FLEET_BRIDGE_ROLLUP_INTERVAL_S": "0.5", "FLEET_BRIDGE_ROLLUP_SETTLE_S": "0"}
    replicas = [
        start_bridge(FLEET_BRIDGE_MQTT_CLIENT_ID=f"bridge-{uid}-{n}", FLEET_BRIDGE_MQTT_SHARED_GROUP=f"g{uid}", **loop)
        for n in range(2)
    ]
    await asyncio.gather(*(r.wait_ready() for r in replicas))
    published = with_faults(messages, 0.05)
    publisher = threading.Thread(target=publish_paced, args=(*broker, published, 10, 0.5))
    publisher.start()
    manual = [["rollup"]] * 3 + [["rollup", "--from", "-4h", "--to", "now"]]
    await asyncio.gather(*(fleet_bridge(bridge_env, *argv) for argv in manual))
    await asyncio.to_thread(publisher.join)

    await wait_stored_exactly(db, schema, truth, timeout=120, after="in history")

    def all_received() -> bool:
        received = sum(r.metric("fleet_bridge_messages_received_total") for r in replicas)
        return received == len(published) and all(r.metric("fleet_bridge_inflight_messages") == 0 for r in replicas)

    async def settled() -> bool:  # duplicates too: a batch of them still records invalidations
        return await asyncio.to_thread(all_received)

    await wait_for(settled, timeout=60, what="every message received and acknowledged")
    await fleet_bridge(bridge_env, "rollup")
    window = (start - HOUR, start + 3 * HOUR)
    await assert_table_exact(db, schema, *window)
    await assert_report_exact(db, schema, *window)
    for replica in replicas:
        assert replica.metric("fleet_bridge_db_errors_total", kind="transient") == 0
        assert "rollup_failed" not in replica.logs()
    assert sum(replica.metric("fleet_bridge_rollup_hours_total") for replica in replicas) > 0
