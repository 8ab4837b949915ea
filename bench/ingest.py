"""Ingest benchmark: the bridge's backlog drain against the ceilings of its own
parts (its intake alone; its SQL alone on one and on two connections) and the
seed's one-transaction-per-reading design, all measured in the same run; with
--latency, the drain again with 1 and 5 ms added each way to PostgreSQL; and
steady state at the fleet's real-time rate.

    .venv/bin/python -m bench.ingest --quick      # ~4 minutes
    .venv/bin/python -m bench.ingest --full --latency   # 1,000,000-reading drains, 5 min steady state

Needs PostgreSQL (FLEET_BRIDGE_DB_DSN, default the local `test` database) and the
mosquitto binary (a private broker with deploy/mosquitto/mosquitto.conf is started).
Prints a markdown table; speeds are only comparable within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator

import aiomqtt
import asyncpg
import uvloop
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import (
    DSN,
    PREFIX,
    Sampler,
    backlog,
    bridge_process,
    drop_schema,
    fresh_schema,
    histogram_quantile,
    history_count,
)
from bridge import clock
from bridge.config import load_settings
from bridge.ingest.batch import Batch
from bridge.ingest.fast_link import FastLink
from bridge.ingest.inflight import InflightWindow
from bridge.ingest.parse import ParseRules, Reading, parse_message
from bridge.ingest.service import window_capacity
from bridge.ingest.store import PgStore
from bridge.ingest.writer import Writer
from bridge.metrics import Health, Metrics
from tests.support.helpers import BridgeProcess, publish
from tests.support.services import ROOT, MosquittoProcess
from tests.support.sessions import session_present
from tests.support.tcp_proxy import TcpProxy, through_proxy


def committed(bridge: BridgeProcess) -> float:
    """Readings the bridge has committed (stored, or found stored already); 0 while
    its HTTP port is not up yet."""
    try:
        scrape = bridge.scrape()
    except OSError:
        return 0.0
    return scrape.value("fleet_bridge_rows_written_total") + scrape.value("fleet_bridge_duplicates_total")


async def bridge_drain(
    broker: MosquittoProcess,
    messages: list[tuple[str, bytes]],
    *,
    commits: int = 2,
    db_delay_s: float = 0.0,
    schema: str = "bench_drain",
    **settings: str,
) -> dict[str, float]:
    """Queue the backlog in a stopped bridge's session, start it, time the drain;
    ``commits`` batches commit at once, each byte to and from PostgreSQL delayed
    ``db_delay_s`` each way, ``settings`` (FLEET_BRIDGE_* variables) added."""
    await fresh_schema(schema)
    env = {
        "FLEET_BRIDGE_DB_COMMITS_IN_FLIGHT": str(commits), "FLEET_BRIDGE_DB_POOL_MAX": str(commits + 2), **settings,
    }  # fmt: skip
    with bridge_process(broker, schema, **env) as bridge:
        await bridge.wait_ready()  # session and subscriptions exist now
    await asyncio.to_thread(publish, broker.host, broker.port, messages, timeout=3600)
    conn = await asyncpg.connect(DSN)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if db_delay_s:  # the proxy costs this process CPU: only where it is measured
                proxy = await stack.enter_async_context(TcpProxy("127.0.0.1", 5432, delay_s=db_delay_s))
                env["FLEET_BRIDGE_DB_DSN"] = through_proxy(DSN, proxy)
            started = time.perf_counter()
            with bridge_process(broker, schema, **env) as bridge:
                assert bridge.proc is not None
                sampler = Sampler(bridge.proc.pid)
                # The bridge's own count of what it committed: polling count(*) over a
                # growing history would load the database being measured.
                while await asyncio.to_thread(committed, bridge) < len(messages):
                    sampler.sample()
                    await asyncio.sleep(0.2)
                elapsed = time.perf_counter() - started
                cpu = sampler.cpu_seconds()
        stored = await history_count(conn, schema)
        assert stored == len(messages), f"{stored} of {len(messages)} readings stored"
    finally:
        # Its session would go on queueing what the other measurements publish.
        session_present(broker.host, broker.port, f"bench-{schema}", end=True)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    return {"rate": len(messages) / elapsed, "seconds": elapsed, "cpu_pct": 100 * cpu / elapsed,
            "peak_rss_mib": sampler.peak_rss / 2**20}  # fmt: skip


@contextlib.asynccontextmanager
async def persistent_client(
    broker: MosquittoProcess, client_id: str, *, subscribe: bool = False
) -> AsyncIterator[aiomqtt.Client]:
    """A persistent session; ``subscribe`` only when creating it (a backlog delays the SUBACK)."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 6000
    client = aiomqtt.Client(broker.host, broker.port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5,
                            clean_start=False, properties=props)  # fmt: skip
    async with client:
        if subscribe:
            await client.subscribe(f"{PREFIX}meter/+", qos=1)
            await client.subscribe(f"{PREFIX}vehicle/+", qos=1)
        yield client


async def bare_intake(broker: MosquittoProcess, messages: list[tuple[str, bytes]]) -> dict[str, float]:
    """Ceiling: the bridge's own intake alone, in this process: its fast reader takes
    the queued backlog off the socket, every message is parsed into a reading and
    acknowledged in batches, and nothing is written anywhere."""
    settings = load_settings(
        environ={"FLEET_BRIDGE_MQTT_HOST": broker.host, "FLEET_BRIDGE_MQTT_PORT": str(broker.port),
                 "FLEET_BRIDGE_MQTT_CLIENT_ID": "bench-intake", "FLEET_BRIDGE_MQTT_TOPIC_PREFIX": PREFIX}
    )  # fmt: skip
    window = InflightWindow(window_capacity(settings))
    async with FastLink(settings, window):
        pass  # the session and its subscriptions exist now
    await asyncio.to_thread(publish, broker.host, broker.port, messages, timeout=3600)
    rules = ParseRules(topic_prefix=PREFIX)
    taken = 0
    started = time.perf_counter()
    async with FastLink(settings, window) as link:
        while taken < len(messages):
            batch = [await link.receive()]
            batch += itertools.islice(iter(link.take_nowait, None), settings.batch.max_rows - 1)
            for message in batch:
                parse_message(message.topic, message.payload, clock.now(), rules)
            link.ack(batch)
            window.release(len(batch))
            taken += len(batch)
        elapsed = time.perf_counter() - started
        await link.close(end_session=True)
    return {"rate": taken / elapsed, "seconds": elapsed}


def parsed_batches(messages: list[tuple[str, bytes]], size: int) -> list[Batch]:
    now = clock.now()
    rules = ParseRules(topic_prefix=PREFIX)
    readings = [r for t, p in messages if isinstance(r := parse_message(t, p, now, rules), Reading)]
    return [Batch(readings=readings[i : i + size]) for i in range(0, len(readings), size)]


async def database_alone(
    messages: list[tuple[str, bytes]], connections: int, size: int = 2000, schema: str = "bench_db"
) -> dict[str, float]:
    """Ceiling: the bridge's own SQL (Writer over PgStore) fed pre-parsed batches back
    to back, ``connections`` batches committing at once."""
    await fresh_schema(schema)
    batches: asyncio.Queue[Batch] = asyncio.Queue()
    for batch in parsed_batches(messages, size):
        batches.put_nowait(batch)
    pool = await asyncpg.create_pool(DSN, min_size=connections, max_size=connections)
    writer = Writer(PgStore(pool, schema), Metrics(), Health())

    async def commit_until_empty() -> None:
        while not batches.empty():
            await writer.write(batches.get_nowait())

    try:
        started = time.perf_counter()
        await asyncio.gather(*(commit_until_empty() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
        await drop_schema(schema)
    return {"rate": len(messages) / elapsed, "seconds": elapsed}


async def one_transaction_per_reading(broker: MosquittoProcess, messages: list[tuple[str, bytes]]) -> dict[str, float]:
    """The seed's literal design: per reading, history INSERT + current UPSERT in one transaction."""
    schema = "bench_seed"
    await fresh_schema(schema)
    async with persistent_client(broker, "bench-seed", subscribe=True):
        pass
    await asyncio.to_thread(publish, broker.host, broker.port, messages, timeout=3600)
    conn = await asyncpg.connect(DSN)
    rules = ParseRules(topic_prefix=PREFIX)
    sql = {
        stream: (
            f'INSERT INTO "{schema}".{stream}_telemetry_history ({stream}_id, recorded_at, received_at, {energy})'
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            f'INSERT INTO "{schema}".{stream}_current_state AS c ({stream}_id, recorded_at, received_at, {energy})'
            f" VALUES ($1, $2, $3, $4) ON CONFLICT ({stream}_id) DO UPDATE SET recorded_at = excluded.recorded_at,"
            f" received_at = excluded.received_at, {energy} = excluded.{energy}"
            " WHERE excluded.recorded_at > c.recorded_at",
        )
        for stream, energy in (("meter", "kwh_consumed_ac"), ("vehicle", "kwh_delivered_dc"))
    }
    started = time.perf_counter()
    received = 0
    try:
        async with persistent_client(broker, "bench-seed") as client:
            async for message in client.messages:
                reading = parse_message(message.topic.value, message.payload, clock.now(), rules)
                assert isinstance(reading, Reading)
                history, current = sql[reading.stream.name]
                args = (reading.device_id, reading.recorded_at, reading.received_at, reading.values[0])
                async with conn.transaction():
                    await conn.execute(history, *args)
                    await conn.execute(current, *args)
                received += 1
                if received == len(messages):
                    break
        elapsed = time.perf_counter() - started
    finally:
        session_present(broker.host, broker.port, "bench-seed", end=True)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    return {"rate": received / elapsed, "seconds": elapsed}


async def steady_state(broker: MosquittoProcess, pairs: int, minutes: float) -> dict[str, float]:
    """The full fleet in real time: loadgen publishes, the bridge (default settings) keeps up."""
    schema = "bench_steady"
    await fresh_schema(schema)
    env = {**os.environ, "FLEET_BRIDGE_MQTT_PORT": str(broker.port), "FLEET_BRIDGE_MQTT_TOPIC_PREFIX": PREFIX}
    with bridge_process(broker, schema) as bridge:
        await bridge.wait_ready()
        assert bridge.proc is not None
        sampler = Sampler(bridge.proc.pid)
        started = time.perf_counter()
        out_dir = tempfile.mkdtemp(prefix="bench-steady-")
        loadgen = subprocess.Popen(
            [sys.executable, "-m", "loadgen", "run", "--devices", str(pairs), "--interval", "60",
             "--duration", f"{int(minutes * 60)}s", "--speedup", "1", "--out", out_dir],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        while loadgen.poll() is None:
            sampler.sample()
            await asyncio.sleep(1)
        await asyncio.sleep(2)
        elapsed = time.perf_counter() - started
        text = bridge.http_get("/metrics")[1]
        cpu = sampler.cpu_seconds()
    conn = await asyncpg.connect(DSN)
    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await conn.close()
    return {
        "latency_p50_s": histogram_quantile(text, "fleet_bridge_pipeline_latency_seconds", 0.5),
        "latency_p99_s": histogram_quantile(text, "fleet_bridge_pipeline_latency_seconds", 0.99),
        "lag_p50_s": histogram_quantile(text, "fleet_bridge_ingest_lag_seconds", 0.5),
        "lag_p99_s": histogram_quantile(text, "fleet_bridge_ingest_lag_seconds", 0.99),
        "cpu_pct": 100 * cpu / elapsed,
        "peak_rss_mib": sampler.peak_rss / 2**20,
    }


def print_drain_table(drain_n: int, seed_n: int, results: dict[str, dict[str, float]]) -> None:
    drain = results["drain"]
    ceilings = {
        "intake alone (socket to parsed readings, no database)": results["intake"],
        "database alone, bridge SQL, 1 connection": results["database_1"],
        "database alone, bridge SQL, 2 connections": results["database_2"],
    }
    print(f"\n| measurement ({drain_n:,} readings) | msg/s | drain / this |\n|---|---:|---:|")
    print(f"| bridge drain, 2 commits in flight (default) | {drain['rate']:,.0f} | 1.00 |")
    one = results["drain_1"]
    print(f"| bridge drain, 1 commit at a time | {one['rate']:,.0f} | {drain['rate'] / one['rate']:.2f} |")
    for label, result in ceilings.items():
        print(f"| ceiling: {label} | {result['rate']:,.0f} | {drain['rate'] / result['rate']:.2f} |")
    seed = results["seed"]
    print(
        f"| seed: one transaction per reading ({seed_n:,}) | {seed['rate']:,.0f} | {drain['rate'] / seed['rate']:.1f} |"
    )
    limit = min(ceilings, key=lambda label: ceilings[label]["rate"])
    print(f"\nThe limit: {limit} ({ceilings[limit]['rate']:,.0f} msg/s).")
    print(f"Drain: bridge CPU {drain['cpu_pct']:.0f} % of one core, peak RSS {drain['peak_rss_mib']:.0f} MiB")


def print_latency_table(results: dict[float, dict[str, float]]) -> None:
    base = results[0.0]["rate"]
    print("\n| added latency to PostgreSQL, each way | drain msg/s | / drain at 0 ms |\n|---:|---:|---:|")
    for delay, result in sorted(results.items()):
        print(f"| {delay * 1000:g} ms | {result['rate']:,.0f} | {result['rate'] / base:.2f} |")


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="200k drain, 1 min steady state (default)")
    mode.add_argument("--full", action="store_true", help="1M drain, 5 min steady state")
    parser.add_argument("--latency", action="store_true", help="also drain with 1 and 5 ms added to PostgreSQL")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--skip-steady", action="store_true", help="only the drain measurements")
    parts.add_argument("--only-steady", action="store_true", help="only the steady-state measurement")
    args = parser.parse_args()
    drain_n, seed_n, steady_min = (1_000_000, 30_000, 5.0) if args.full else (200_000, 10_000, 1.0)

    broker = MosquittoProcess("/usr/sbin/mosquitto")
    broker.start()
    results: dict[str, dict[str, float]] = {}
    latency: dict[float, dict[str, float]] = {}
    try:
        print(f"# {platform.node()}: {os.cpu_count()} cores, python {platform.python_version()}", file=sys.stderr)
        if not args.only_steady:
            messages = backlog(drain_n)
            results["drain"] = await bridge_drain(broker, messages)
            results["drain_1"] = await bridge_drain(broker, messages, commits=1)
            results["intake"] = await bare_intake(broker, messages)
            results["database_1"] = await database_alone(messages, connections=1)
            results["database_2"] = await database_alone(messages, connections=2)
            results["seed"] = await one_transaction_per_reading(broker, backlog(seed_n))
            print(results, file=sys.stderr)
            if args.latency:
                latency[0.0] = results["drain"]
                for delay in (0.001, 0.005):
                    latency[delay] = await bridge_drain(broker, messages, db_delay_s=delay)
                    print(delay, latency[delay], file=sys.stderr)
        if not args.skip_steady:
            results["steady"] = await steady_state(broker, 10_000, steady_min)
    finally:
        broker.close()

    if not args.only_steady:
        print_drain_table(drain_n, seed_n, results)
    if latency:
        print_latency_table(latency)
    if "steady" in results:
        print(f"\n| steady state, 10,000 pairs, real time, {steady_min:g} min | value |\n|---|---:|")
        for key, value in results["steady"].items():
            print(f"| {key} | {value:.3g} |")


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
