"""Benchmark of the efficiency roll-up (not a test): everything in one run, on the
same data.

    python -m bench.rollup_bench --days 7

1. Load N days of the full fleet's history (bench/report_bench.py's loader: 10,000
   meters and 10,000 vehicles, a reading a minute each, COPY into daily partitions).
2. Roll up every loaded hour with ``run_pass`` on two connections (as ``fleet-bridge
   rollup --from --to`` does), timing each fleet-hour; a few hours again on one
   connection (as the daemon's loop does).
3. The pairing alternatives on one fleet-hour, live: a probe of the meter index per
   vehicle reading (the previous report), a hash join on 10 s time buckets with
   DISTINCT ON, and binary search in per-meter arrays (the one shipped).
4. Reads: the fleet over 24 h from the roll-up (library query time, and the CLI's
   wall time), one vehicle over 24 h (roll-up and live), ``--summary`` over 30 days
   (roll-up rows synthesized, by copying a loaded day, for the days without history).
5. The ingest drain (bench/ingest.py's, with a private broker) with the daemon's
   roll-up loop off, at its default interval and every 10 s, the backlog's readings
   three hours old so every pass has settled hours to recompute; each drain after
   a CHECKPOINT, in rounds that put each variant first once. Then the same
   readings through the bridge's SQL alone (no broker), which records the
   invalidations in each batch's statement.

Warm cache, medians of ``--runs`` after one warm-up. The schema is dropped at the
end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from bench.common import backlog
from bench.ingest import bridge_drain, database_alone
from bench.report_bench import add_load_arguments, load, log
from bridge.analytics.pairing import HOUR, NO_JIT, range_args
from bridge.analytics.report import fleet_report, hourly_summary, report_sql, vehicle_report
from bridge.analytics.rollup import retained_from, rollup_lock, run_pass
from bridge.db import qualified
from bridge.schema.partitions import ROLLUP_TABLES, ensure_partitions
from tests.support.services import MosquittoProcess

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
SUMMARY_DAYS = 30
DRAIN_SCHEMA = "bench_rollup_drain"  # not bench.ingest's: both benchmarks may run on one database
DATABASE_ALONE = "database alone: the bridge's SQL, one connection"
LOOP_VARIANTS = {"loop off": "0", "loop every 60 s (default)": "60", "loop every 10 s": "10"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.rollup_bench", description=__doc__.split("\n\n")[0])
    add_load_arguments(parser, dsn=DEFAULT_DSN, schema="bench_rollup", days=7)
    parser.add_argument("--drain", type=int, default=1_000_000, help="readings in the drain backlog (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the drain, each variant first in one")
    return parser.parse_args()


def table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\n{title} (load average {load} at the end)\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |", flush=True)


async def timed(call: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    """Seconds of ``runs`` calls after one warm-up call."""
    await call()
    times = []
    for _ in range(runs):
        begun = time.perf_counter()
        await call()
        times.append(time.perf_counter() - begun)
    return times


def spread(times: list[float], scale: float = 1000, digits: int = 1) -> tuple[str, str, str]:
    """Median, min and max, in milliseconds unless ``scale`` says otherwise."""
    return tuple(f"{scale * value:.{digits}f}" for value in (statistics.median(times), min(times), max(times)))  # type: ignore[return-value]


# --- roll-up ------------------------------------------------------------------------


async def roll_up(conns: list[asyncpg.Connection], schema: str, start: datetime, end: datetime) -> list[float]:
    """Every hour of [start, end) rolled up on ``conns``; seconds per fleet-hour."""
    now = datetime.now(UTC)
    stamps = [time.perf_counter()]

    def progress(done: int, total: int, hour: datetime) -> None:
        stamps.append(time.perf_counter())
        if done % 24 == 0:
            log(f"rolled up {done}/{total} hours (through {hour:%Y-%m-%d %H:00})")

    async with rollup_lock(conns[0], schema, wait=None):
        await run_pass(
            conns, schema, now=now, settle=timedelta(0), keep_from=retained_from(now, 400),
            requested=(start, end), progress=progress,
        )  # fmt: skip
    return [b - a for a, b in itertools.pairwise(stamps)]


async def synthesize_month(conn: asyncpg.Connection, schema: str, first: datetime, days: int) -> None:
    """Roll-up rows for the SUMMARY_DAYS - days days before ``first``, each day copied
    from one of the loaded days (only the roll-up is read for these days)."""
    missing = SUMMARY_DAYS - days
    targets = [first - timedelta(days=n) for n in range(1, missing + 1)]
    for table_name in ROLLUP_TABLES:
        await ensure_partitions(conn, schema, table_name, [day.date() for day in targets])
    for table_name in ROLLUP_TABLES:
        columns = "vehicles, total_dc_kwh, total_ac_kwh, matched, unmatched, computed_at"
        if table_name == "efficiency_hourly":
            columns = "vehicle_id, meter_id, total_dc_kwh, total_ac_kwh, matched, unmatched, computed_at"
        for n, day in enumerate(targets):
            source = first + timedelta(days=n % days)
            await conn.execute(
                f"INSERT INTO {qualified(schema, table_name)} (hour, {columns})"
                f" SELECT hour - $1::interval, {columns} FROM {qualified(schema, table_name)}"
                " WHERE hour >= $2 AND hour < $2 + interval '1 day'",
                source - day, source,
            )  # fmt: skip
    for table_name in ROLLUP_TABLES:
        await conn.execute(f"VACUUM ANALYZE {qualified(schema, table_name)}")


# --- the pairing alternatives ---------------------------------------------------------


def lateral_probe_sql(schema: str) -> str:
    """The previous report: one LIMIT 1 probe of the meter key index per vehicle reading."""
    return f"""
SELECT p.vehicle_id, count(p.ac), coalesce(sum(p.ac), 0)
FROM (SELECT v.vehicle_id, m.kwh_consumed_ac AS ac
      FROM {qualified(schema, "vehicle_meter_mapping")} map
      JOIN {qualified(schema, "vehicle_telemetry_history")} v
        ON v.vehicle_id = map.vehicle_id AND v.recorded_at >= $1 AND v.recorded_at < $2
      LEFT JOIN LATERAL (
          SELECT mt.kwh_consumed_ac FROM {qualified(schema, "meter_telemetry_history")} mt
          WHERE mt.meter_id = map.meter_id AND mt.recorded_at >= $3 AND mt.recorded_at <= $4
            AND mt.recorded_at >= v.recorded_at - interval '5 s' AND mt.recorded_at <= v.recorded_at + interval '5 s'
          ORDER BY abs(extract(epoch FROM mt.recorded_at - v.recorded_at)), mt.recorded_at LIMIT 1) m ON true) p
GROUP BY 1"""


def bucket_join_sql(schema: str) -> str:
    """A hash join on 10 s time buckets (each meter reading in its bucket and the one
    before), then the nearest candidate per vehicle reading by DISTINCT ON."""
    return f"""
WITH m AS (
    SELECT mt.meter_id, mt.recorded_at, mt.kwh_consumed_ac AS ac,
           floor(extract(epoch FROM mt.recorded_at) / 10)::bigint - o AS bucket
    FROM {qualified(schema, "meter_telemetry_history")} mt CROSS JOIN (VALUES (0), (1)) AS shift (o)
    WHERE mt.recorded_at >= $3 AND mt.recorded_at <= $4
), nearest AS (
    SELECT DISTINCT ON (v.vehicle_id, v.recorded_at) v.vehicle_id, m.ac
    FROM {qualified(schema, "vehicle_meter_mapping")} map
    JOIN {qualified(schema, "vehicle_telemetry_history")} v
      ON v.vehicle_id = map.vehicle_id AND v.recorded_at >= $1 AND v.recorded_at < $2
    LEFT JOIN m ON m.meter_id = map.meter_id
               AND m.bucket = floor(extract(epoch FROM v.recorded_at - interval '5 s') / 10)::bigint
               AND m.recorded_at BETWEEN v.recorded_at - interval '5 s' AND v.recorded_at + interval '5 s'
    ORDER BY v.vehicle_id, v.recorded_at, abs(extract(epoch FROM m.recorded_at - v.recorded_at)), m.recorded_at
)
SELECT vehicle_id, count(ac), coalesce(sum(ac), 0) FROM nearest GROUP BY 1"""


async def alternatives(conn: asyncpg.Connection, schema: str, hour: datetime, runs: int) -> list[tuple[Any, ...]]:
    args = range_args(hour, hour + HOUR)
    cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("probe of the meter index per vehicle reading (previous report)",
         lambda: conn.fetch(lateral_probe_sql(schema), *args)),
        ("hash join on 10 s buckets + DISTINCT ON", lambda: conn.fetch(bucket_join_sql(schema), *args)),
        ("binary search in per-meter arrays (shipped), fleet_report(live=True)",
         lambda: fleet_report(conn, schema, hour, hour + HOUR, live=True)),
    ]  # fmt: skip
    await conn.execute("SET work_mem = '64MB'")  # the hash join and sorts get what they need
    await conn.execute("SET jit = off")
    rows = [(name, *spread(await timed(call, runs))) for name, call in cases]
    await conn.execute("RESET work_mem")
    await conn.execute("RESET jit")
    return rows


# --- reads ----------------------------------------------------------------------------


def cli_wall(args: argparse.Namespace, *argv: str) -> float:
    """Wall seconds of a fleet-bridge command, its output thrown away."""
    env = {**os.environ, "FLEET_BRIDGE_DB_DSN": args.dsn, "FLEET_BRIDGE_DB_SCHEMA": args.schema}
    begun = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bridge", *argv], env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - begun


async def server_time(conn: asyncpg.Connection, schema: str, day: datetime, runs: int) -> list[float]:
    """The report query for a rolled-up fleet-day as the server runs it (EXPLAIN
    ANALYZE's execution time: no transfer, no rows built in Python)."""
    hours = [day + n * HOUR for n in range(24)]
    args: tuple[object, ...] = (*range_args(day, day + timedelta(days=1)), None, hours, [], [])
    times = []
    for _ in range(runs + 1):
        async with conn.transaction():
            await conn.execute(NO_JIT)  # as the library runs it
            plan = await conn.fetchval(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {report_sql(schema)}", *args)
        times.append(orjson.loads(plan)[0]["Execution Time"] / 1000)
    return times[1:]


async def reads(conn: asyncpg.Connection, args: argparse.Namespace, last: datetime) -> list[tuple[Any, ...]]:
    schema, day = args.schema, timedelta(days=1)
    vehicle = f"EV-{args.devices // 2:05d}"
    month = (last + day - timedelta(days=SUMMARY_DAYS), last + day)
    cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("fleet, 24 h, roll-up", lambda: fleet_report(conn, schema, last, last + day)),
        ("one vehicle, 24 h, roll-up", lambda: vehicle_report(conn, schema, vehicle, last, last + day)),
        ("one vehicle, 24 h, live", lambda: vehicle_report(conn, schema, vehicle, last, last + day, live=True)),
        (f"--summary, {SUMMARY_DAYS} days, roll-up", lambda: hourly_summary(conn, schema, *month)),
        ("fleet, 1 h, live", lambda: fleet_report(conn, schema, last + 12 * HOUR, last + 13 * HOUR, live=True)),
    ]
    rows = [(name, *spread(await timed(call, args.runs))) for name, call in cases]
    rows.insert(
        1, ("fleet, 24 h, roll-up: server execution only", *spread(await server_time(conn, schema, last, args.runs)))
    )
    span = ["--from", last.isoformat(), "--to", (last + day).isoformat()]
    walls = [cli_wall(args, "report", *span, "--format", "csv") for _ in range(3)]
    rows.append(("CLI wall: fleet-bridge report, fleet, 24 h, CSV", *spread(walls)))
    month_span = ["--from", month[0].isoformat(), "--to", month[1].isoformat()]
    walls = [cli_wall(args, "report", "--summary", *month_span, "--format", "json") for _ in range(3)]
    rows.append((f"CLI wall: fleet-bridge report --summary, {SUMMARY_DAYS} days, JSON", *spread(walls)))
    return rows


# --- ingest with and without the loop ---------------------------------------------------


async def checkpoint(dsn: str) -> None:
    """Start from a flushed database: a drain writes about half a gigabyte of WAL, so
    the server's periodic checkpoint would otherwise land in whichever drain comes
    second or third, and look like that variant's cost."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def drains(args: argparse.Namespace) -> list[tuple[Any, ...]]:
    """The same backlog drained with each loop setting, in A/B rounds; then the same
    readings through the bridge's SQL alone."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 3 * HOUR
    messages = backlog(args.drain, start=start)
    broker = MosquittoProcess("/usr/sbin/mosquitto")
    broker.start()
    rates: dict[str, list[float]] = {name: [] for name in LOOP_VARIANTS}
    variants = list(LOOP_VARIANTS.items())
    try:
        for n in range(args.rounds):
            for name, interval in variants[n % 3 :] + variants[: n % 3]:  # each variant first in some round
                await checkpoint(args.dsn)
                result = await bridge_drain(
                    broker, messages, schema=DRAIN_SCHEMA, FLEET_BRIDGE_ROLLUP_INTERVAL_S=interval
                )
                rates[name].append(result["rate"])
                log(f"drain round {n + 1}, {name}: {result['rate']:,.0f} msg/s, load {os.getloadavg()[0]:.1f}")
    finally:
        broker.close()
    rates[DATABASE_ALONE] = []
    for _ in range(args.rounds):
        await checkpoint(args.dsn)
        rates[DATABASE_ALONE].append((await database_alone(messages, connections=1, schema=DRAIN_SCHEMA))["rate"])
    log(f"database alone: {rates[DATABASE_ALONE]}")
    off, alone = statistics.median(rates["loop off"]), statistics.median(rates[DATABASE_ALONE])
    return [
        (name, ", ".join(f"{rate:,.0f}" for rate in found),
         f"{statistics.median(found) / (alone if name.startswith('database') else off):.3f}")
        for name, found in rates.items()
    ]  # fmt: skip


async def main() -> None:
    args = parse_args()
    first = datetime(args.start.year, args.start.month, args.start.day, tzinfo=UTC)
    last = first + timedelta(days=args.days - 1)
    conn = await asyncpg.connect(args.dsn)
    helper = await asyncpg.connect(args.dsn)
    try:
        if not args.skip_load:
            await load(conn, args)
        hours = await roll_up([conn, helper], args.schema, first, first + timedelta(days=args.days))
        one_conn = await roll_up([conn], args.schema, last + 9 * HOUR, last + 15 * HOUR)
        table(
            f"Roll-up, {args.days} day(s) of {args.devices:,} pairs loaded ({len(hours)} fleet-hours)",
            ("roll-up of one fleet-hour", "median s", "min s", "max s", "hours"),
            [
                ("two connections (fleet-bridge rollup)", *spread(hours, 1, 2), len(hours)),
                ("one connection (the daemon's loop)", *spread(one_conn, 1, 2), len(one_conn)),
            ],
        )
        await synthesize_month(conn, args.schema, first, args.days)
        table(f"Pairing alternatives, one fleet-hour live ({last + 12 * HOUR:%Y-%m-%d %H:00})",
              ("computation", "median ms", "min ms", "max ms"),
              await alternatives(conn, args.schema, last + 12 * HOUR, max(3, args.runs // 2)))  # fmt: skip
        table("Reads", ("query", "median ms", "min ms", "max ms"), await reads(conn, args, last))
    finally:
        if not args.keep:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE')
            log(f"schema {args.schema} dropped")
        await conn.close()
        await helper.close()
    if args.drain:
        table(
            f"Ingest drain of {args.drain:,} readings (three hours old) with the roll-up loop",
            ("daemon", "msg/s per round", "median / loop off (database alone: / as shipped)"),
            await drains(args),
        )


if __name__ == "__main__":
    asyncio.run(main())
