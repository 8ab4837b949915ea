"""The core path against real Mosquitto and PostgreSQL: every distinct reading stored
once, current state equal to the newest reading, partitions made on demand."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.helpers import BridgeProcess, meter_payload, publish_async, vehicle_payload, wait_for

pytestmark = pytest.mark.integration


def fleet_messages(
    prefix: str, devices: int, readings_each: int, *, seed: int = 7, start: datetime | None = None
) -> tuple[list[tuple[str, bytes]], dict[tuple[str, str], set[datetime]]]:
    """Readings from ``devices`` meters and vehicles, plus the distinct (device, ts) truth."""
    start = start or datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=readings_each + 5)
    rng = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    truth: dict[tuple[str, str], set[datetime]] = {}
    for n in range(readings_each):
        for d in range(devices):
            ts = start + timedelta(minutes=n, milliseconds=d)
            meter, vehicle = f"MTR-{d:05d}", f"EV-{d:05d}"
            messages.append((f"{prefix}meter/{meter}", meter_payload(ts, rng.uniform(0, 2), seq=n)))
            messages.append((f"{prefix}vehicle/{vehicle}", vehicle_payload(ts, rng.uniform(0, 2), soc_pct=50.0)))
            truth.setdefault(("meter", meter), set()).add(ts)
            truth.setdefault(("vehicle", vehicle), set()).add(ts)
    return messages, truth


def with_faults(messages: list[tuple[str, bytes]], fraction: float, seed: int = 11) -> list[tuple[str, bytes]]:
    """Add ``fraction`` duplicates and move ``fraction`` of the messages out of order."""
    rng = random.Random(seed)
    out = list(messages)
    out += rng.sample(messages, int(len(messages) * fraction))
    for _ in range(int(len(messages) * fraction)):
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]
    return out


async def history_rows(db: asyncpg.Connection, schema: str) -> dict[tuple[str, str], list[datetime]]:
    rows: dict[tuple[str, str], list[datetime]] = {}
    for stream in ("meter", "vehicle"):
        for rec in await db.fetch(f'SELECT {stream}_id AS id, recorded_at FROM "{schema}".{stream}_telemetry_history'):
            rows.setdefault((stream, rec["id"]), []).append(rec["recorded_at"])
    return rows


async def count(db: asyncpg.Connection, schema: str, table: str) -> int:
    value = await db.fetchval(f'SELECT count(*) FROM "{schema}".{table}')
    assert isinstance(value, int)
    return value


@pytest.mark.slow
async def test_readings_with_duplicates_and_disorder_are_stored_exactly_once(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """20,000 readings from 1,000 meters and 1,000 vehicles with 5% duplicates and 5%
    out of order: each distinct (device, ts) is in history once, and each current
    state row is its device's newest reading."""
    messages, truth = fleet_messages(prefix, devices=1000, readings_each=10)
    bridge = start_bridge()
    await bridge.wait_ready()
    await publish_async(*broker, with_faults(messages, 0.05))

    expected = sum(len(v) for v in truth.values())
    await wait_for(lambda: _history_total_is(db, schema, expected), timeout=120, what=f"{expected} history rows")
    stored = await history_rows(db, schema)
    assert {key: sorted(v) for key, v in stored.items()} == {key: sorted(v) for key, v in truth.items()}

    for stream in ("meter", "vehicle"):
        current = {
            r["id"]: r["recorded_at"]
            for r in await db.fetch(f'SELECT {stream}_id AS id, recorded_at FROM "{schema}".{stream}_current_state')
        }
        newest = {device: max(ts) for (s, device), ts in truth.items() if s == stream}
        assert current == newest
    assert await count(db, schema, "ingest_rejects") == 0
    assert bridge.metric("fleet_bridge_rows_written_total") == expected
    assert bridge.metric("fleet_bridge_duplicates_total") == len(messages) * 0.05 // 1


async def _history_total_is(db: asyncpg.Connection, schema: str, expected: int) -> bool:
    total = await count(db, schema, "meter_telemetry_history") + await count(db, schema, "vehicle_telemetry_history")
    assert total <= expected, f"more rows than distinct readings: {total} > {expected}"
    return total == expected


async def test_reading_for_a_day_without_partition_is_stored_in_a_new_partition(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """migrate made today's and later partitions; a reading from two days ago gets one on demand."""
    two_days_ago = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=2)
    partition = f"meter_telemetry_history_p{two_days_ago:%Y%m%d}"
    assert await db.fetchval("SELECT to_regclass($1)", f'"{schema}".{partition}') is None

    bridge = start_bridge()
    await bridge.wait_ready()
    await publish_async(*broker, [(f"{prefix}meter/MTR-1", meter_payload(two_days_ago, 1.25))])

    async def stored() -> bool:
        return await db.fetchval(f'SELECT count(*) FROM "{schema}".{partition}') == 1

    async def partition_exists() -> bool:
        return await db.fetchval("SELECT to_regclass($1)", f'"{schema}".{partition}') is not None

    await wait_for(partition_exists, timeout=60, what="the on-demand partition")
    await wait_for(stored, timeout=60, what="the reading in the new partition")
    row = await db.fetchrow(f'SELECT * FROM "{schema}".meter_telemetry_history WHERE meter_id = $1', "MTR-1")
    assert row is not None
    assert row["recorded_at"] == two_days_ago
    assert row["kwh_consumed_ac"] == 1.25
