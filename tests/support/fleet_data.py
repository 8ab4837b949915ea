"""Shared test data: a simulated fleet's messages and the truth to check them by,
and the queries that compare what was stored with it."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta

import asyncpg

from bridge import clock
from tests.support.helpers import meter_payload, publish, vehicle_payload, wait_for

Truth = dict[tuple[str, str], set[datetime]]


def fleet_messages(
    prefix: str, devices: int, readings_each: int, *, seed: int = 7, start: datetime | None = None
) -> tuple[list[tuple[str, bytes]], Truth]:
    """Readings from ``devices`` meters and vehicles, plus the distinct (device, ts) truth."""
    start = start or clock.now().replace(microsecond=0) - timedelta(minutes=readings_each + 5)
    rng = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    truth: Truth = {}
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


def publish_paced(host: str, port: int, messages: list[tuple[str, bytes]], chunks: int, pause_s: float) -> None:
    """Publish in ``chunks`` with pauses, so the stream spans the kills."""
    size = -(-len(messages) // chunks)
    for start in range(0, len(messages), size):
        publish(host, port, messages[start : start + size])
        time.sleep(pause_s)


async def history_total(db: asyncpg.Connection, schema: str) -> int:
    """Rows in both history tables."""
    return await count(db, schema, "meter_telemetry_history") + await count(db, schema, "vehicle_telemetry_history")


async def assert_stored_exactly(db: asyncpg.Connection, schema: str, truth: Truth) -> None:
    """History holds each distinct reading once; current state is each device's newest."""
    stored = await history_rows(db, schema)
    assert {key: sorted(v) for key, v in stored.items()} == {key: sorted(v) for key, v in truth.items()}
    for stream in ("meter", "vehicle"):
        current = {
            r["id"]: r["recorded_at"]
            for r in await db.fetch(f'SELECT {stream}_id AS id, recorded_at FROM "{schema}".{stream}_current_state')
        }
        assert current == {device: max(ts) for (s, device), ts in truth.items() if s == stream}


async def wait_stored_exactly(db: asyncpg.Connection, schema: str, truth: Truth, *, timeout: float, after: str) -> None:
    """Wait until history holds as many rows as the truth has readings, then check
    that it holds exactly those (the timeout is a failure bound)."""
    expected = sum(len(v) for v in truth.values())

    async def all_in() -> bool:
        return await history_total(db, schema) >= expected

    await wait_for(all_in, timeout=timeout, what=f"{expected} readings {after}")
    await assert_stored_exactly(db, schema, truth)
