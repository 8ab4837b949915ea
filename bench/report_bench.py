"""Benchmark of the efficiency report (not a test): load N days of the full fleet's
history with COPY into a schema of its own, then time the report.

    python bench/report_bench.py --days 2

Every device (10,000 meters and 10,000 vehicles by default) reports once a
minute, meter and vehicle each jittered within ±2 s, so 28.8 M rows a day. The
rows go in minute by minute (the order ingest writes them), through the real
migrations and partitions, with the key indexes in place during the load. The
partitions are made UNLOGGED first: that only spares the load its WAL, reads
are the same. Then VACUUM ANALYZE (what autovacuum does to an append-only
table: statistics, and the visibility map that index-only scans need).

Timed, warm cache, median of ``--runs`` after one warm-up run, through the
library functions (``vehicle_report`` includes its mapping look-up): one
vehicle over 24 h, one vehicle over 7 days, the whole fleet over 1 hour. The
schema is dropped at the end (``--keep`` leaves it) so the disk is not left full.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from bench.common import map_pairs
from bridge.analytics.report import EfficiencyRow, fleet_report, vehicle_report
from bridge.schema.migrate import apply_migrations
from bridge.schema.partitions import ensure_partitions, partition_name
from bridge.streams import HISTORY_TABLES

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
JITTER_STEPS = 97  # distinct jitter values, cycled over devices and minutes


def add_load_arguments(parser: argparse.ArgumentParser, *, dsn: str, schema: str, days: int) -> None:
    """What to load where, how often to time, and whether to keep it (also bench/rollup_bench.py's)."""
    parser.add_argument("--dsn", default=os.environ.get("FLEET_BRIDGE_DB_DSN", dsn))
    parser.add_argument("--schema", default=schema, help=f"dropped and re-created (default: {schema})")
    parser.add_argument(
        "--days", type=int, default=days, help=f"days of history to load (about 5 GB each; default {days})"
    )
    parser.add_argument("--devices", type=int, default=10_000, help="meters, and as many vehicles (default 10000)")
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 11, 1), help="first day (UTC)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per query (median reported)")
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards (e.g. to re-run queries)")
    parser.add_argument("--skip-load", action="store_true", help="time the queries on a schema kept earlier")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser, dsn=DEFAULT_DSN, schema="bench_report", days=2)
    parser.add_argument("--vehicle", help="the vehicle of the one-vehicle queries (default: the middle one)")
    return parser.parse_args()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- data -------------------------------------------------------------------------


def jitters() -> list[timedelta]:
    """``JITTER_STEPS`` offsets spread over [-2 s, +2 s]."""
    return [timedelta(milliseconds=-2000 + 4000 * n // (JITTER_STEPS - 1)) for n in range(JITTER_STEPS)]


def hour_rows(stream: str, hour: datetime, devices: int, first_seq: int) -> Iterator[tuple[Any, ...]]:
    """One hour of one stream's readings, minute by minute, every device each minute.

    Values are cheap deterministic patterns (the benchmark measures reads, not
    arithmetic); the vehicle's jitter cycle is shifted so pairs are not aligned."""
    prefix, shift = ("MTR-", 0) if stream == "meter" else ("EV-", 41)
    ids = [f"{prefix}{d:05d}" for d in range(devices)]
    offsets = jitters()
    energy = [0.1 + (n % 50) / 100 for n in range(101)]
    for minute in range(60):
        base = hour + timedelta(minutes=minute)
        received = base + timedelta(seconds=3)
        seq = first_seq + minute
        for d, device in enumerate(ids):
            kwh = energy[(d + minute) % 101]
            recorded = base + offsets[(d + minute + shift) % JITTER_STEPS]
            if stream == "meter":
                yield device, recorded, received, kwh, kwh * 60, 230.0, 16.0, seq
            else:
                yield device, recorded, received, kwh * 0.9, kwh * 54, 50.0, 25.0, seq


COLUMNS = {
    "meter": ["meter_id", "recorded_at", "received_at", "kwh_consumed_ac", "power_kw", "voltage_v", "current_a", "seq"],
    "vehicle": [
        "vehicle_id", "recorded_at", "received_at", "kwh_delivered_dc", "power_kw", "soc_pct", "battery_temp_c", "seq",
    ],
}  # fmt: skip


async def load(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    days = [args.start + timedelta(days=n) for n in range(args.days)]
    # Jitter moves a few readings of the first minute into the day before.
    partition_days = [args.start - timedelta(days=1), *days]
    await conn.execute(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')
    await apply_migrations(conn, args.schema)
    for table in HISTORY_TABLES:
        await ensure_partitions(conn, args.schema, table, partition_days)
        for day in partition_days:
            await conn.execute(f'ALTER TABLE "{args.schema}".{partition_name(table, day)} SET UNLOGGED')
    await map_pairs(conn, args.schema, args.devices)
    started = time.monotonic()
    for n, day in enumerate(days):
        for h in range(24):
            hour = datetime(day.year, day.month, day.day, h, tzinfo=UTC)
            for stream in ("meter", "vehicle"):
                await conn.copy_records_to_table(
                    f"{stream}_telemetry_history",
                    schema_name=args.schema,
                    columns=COLUMNS[stream],
                    records=hour_rows(stream, hour, args.devices, (n * 24 + h) * 60),
                )
            rows = (n * 24 + h + 1) * 60 * args.devices * 2
            log(f"loaded {day} {h:02d}:00 - {rows:,} rows, {rows / (time.monotonic() - started):,.0f} rows/s")
    for table in HISTORY_TABLES:
        log(f"VACUUM ANALYZE {table}")
        await conn.execute(f'VACUUM ANALYZE "{args.schema}".{table}')
    await conn.execute(f'ANALYZE "{args.schema}".vehicle_meter_mapping')
    log(f"load done in {time.monotonic() - started:,.0f} s")


# --- timing -----------------------------------------------------------------------


async def timed(call: Callable[[], Awaitable[list[EfficiencyRow]]], runs: int) -> tuple[list[float], int]:
    """Milliseconds of ``runs`` calls after one warm-up call, and the rows returned."""
    rows = await call()
    times = []
    for _ in range(runs):
        begun = time.perf_counter()
        await call()
        times.append((time.perf_counter() - begun) * 1000)
    return times, len(rows)


async def size_of(conn: asyncpg.Connection, schema: str) -> str:
    total = await conn.fetchval(
        "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c"
        " WHERE c.relnamespace = to_regnamespace($1) AND c.relkind = 'r'",
        schema,
    )
    return str(total)


async def measure(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    # The 24 h and 1 h ranges sit on the last day loaded, so the ±5 s window has
    # data on both sides wherever another day was loaded before it.
    last = datetime(args.start.year, args.start.month, args.start.day, tzinfo=UTC) + timedelta(days=args.days - 1)
    first = last - timedelta(days=args.days - 1)
    schema, vehicle = args.schema, args.vehicle or f"EV-{args.devices // 2:05d}"
    day, hour = timedelta(days=1), timedelta(hours=1)
    cases: list[tuple[str, Callable[[], Awaitable[list[EfficiencyRow]]]]] = [
        ("one vehicle, 24 h", lambda: vehicle_report(conn, schema, vehicle, last, last + day)),
        ("one vehicle, 7 days", lambda: vehicle_report(conn, schema, vehicle, first, first + 7 * day)),
        ("whole fleet, 1 h", lambda: fleet_report(conn, schema, last + 12 * hour, last + 13 * hour)),
    ]
    rows_loaded = args.days * 24 * 60 * args.devices * 2
    print(f"\n{args.days} day(s) loaded: {rows_loaded:,} rows, {await size_of(conn, schema)} with indexes\n")
    print("| query | rows returned | median ms | min ms | max ms | runs |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, call in cases:
        times, count = await timed(call, args.runs)
        median, low, high = statistics.median(times), min(times), max(times)
        print(f"| {name} | {count} | {median:.1f} | {low:.1f} | {high:.1f} | {len(times)} |", flush=True)
    print(f"\none vehicle: {vehicle}; the 7-day range holds the {min(args.days, 7)} day(s) loaded")


async def main() -> None:
    args = parse_args()
    conn = await asyncpg.connect(args.dsn)
    try:
        if not args.skip_load:
            await load(conn, args)
        await measure(conn, args)
    finally:
        if not args.keep:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')
            log(f"schema {args.schema} dropped")
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
