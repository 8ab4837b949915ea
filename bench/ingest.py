"""Ingest benchmark: the bridge's backlog drain against the machine's ceilings and
the seed's one-transaction-per-reading design, all measured in the same run, plus
steady state at the fleet's real-time rate.

    .venv/bin/python -m bench.ingest --quick      # ~2 minutes
    .venv/bin/python -m bench.ingest --full       # 1,000,000-reading drain, 5 min steady state

Needs PostgreSQL (FLEET_BRIDGE_DB_DSN, default the local `test` database) and the
mosquitto binary (a private broker with deploy/mosquitto/mosquitto.conf is started).
Prints a markdown table; speeds are only comparable within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import asyncpg
import orjson
import psutil
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.ingest.batch import Batch
from bridge.ingest.parse import ParseRules, Reading, parse_message
from bridge.ingest.store import PgStore
from bridge.ingest.writer import Writer
from bridge.metrics import Health, Metrics
from bridge.schema.migrate import apply_migrations
from bridge.schema.partitions import run_maintenance
from tests.support.helpers import BridgeProcess, publish
from tests.support.services import ROOT, MosquittoProcess

DSN = os.environ.get("FLEET_BRIDGE_DB_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = "bench/"
LOGS = Path(tempfile.mkdtemp(prefix="bench-ingest-logs-"))


def backlog(n: int, devices: int = 10_000) -> list[tuple[str, bytes]]:
    """n readings, alternating meter and vehicle, one per device per minute."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=n // (2 * devices) + 2)
    out = []
    for i in range(n // 2):
        device, minute = i % devices, i // devices
        ts = (start + timedelta(minutes=minute, milliseconds=device)).isoformat().replace("+00:00", "Z")
        out.append(
            (
                f"{PREFIX}meter/MTR-{device:05d}",
                orjson.dumps(
                    {
                        "ts": ts,
                        "kwh_consumed_ac": 0.5,
                        "power_kw": 30.0,
                        "voltage_v": 230.0,
                        "current_a": 130.0,
                        "seq": minute,
                    }
                ),
            )
        )
        out.append((f"{PREFIX}vehicle/EV-{device:05d}", orjson.dumps(
            {"ts": ts, "kwh_delivered_dc": 0.45, "power_kw": 27.0, "soc_pct": 50.0, "battery_temp_c": 30.0,
             "seq": minute})))  # fmt: skip
    return out


async def fresh_schema(schema: str) -> None:
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await apply_migrations(conn, schema)
        await run_maintenance(conn, schema, premake_days=1, retention_days=400)
    finally:
        await conn.close()


async def history_count(conn: asyncpg.Connection, schema: str) -> int:
    total = 0
    for table in ("meter_telemetry_history", "vehicle_telemetry_history"):
        total += await conn.fetchval(f'SELECT count(*) FROM "{schema}".{table}')
    return total


@contextlib.contextmanager
def bridge_process(broker: MosquittoProcess, schema: str, **env: str) -> Iterator[BridgeProcess]:
    """The daemon bound to ``schema`` and the benchmark's broker; its log goes to LOGS."""
    full_env = {
        "FLEET_BRIDGE_DB_DSN": DSN,
        "FLEET_BRIDGE_DB_SCHEMA": schema,
        "FLEET_BRIDGE_MQTT_PORT": str(broker.port),
        "FLEET_BRIDGE_MQTT_CLIENT_ID": f"bench-{schema}",
        "FLEET_BRIDGE_MQTT_TOPIC_PREFIX": PREFIX,
        "FLEET_BRIDGE_METRICS_HOST": "127.0.0.1",
        "FLEET_BRIDGE_LOG_LEVEL": "warning",
        **env,
    }
    proc = BridgeProcess(full_env, LOGS / f"{schema}.log").start()
    try:
        yield proc
    finally:
        proc.stop()


class Sampler:
    """Peak RSS and CPU time of one process."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak_rss = 0
        self.cpu_start = self._cpu()

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

    def cpu_seconds(self) -> float:
        return self._cpu() - self.cpu_start


async def bridge_drain(broker: MosquittoProcess, messages: list[tuple[str, bytes]]) -> dict[str, float]:
    """Queue the backlog in a stopped bridge's session, start it, time the drain."""
    schema = "bench_drain"
    await fresh_schema(schema)
    with bridge_process(broker, schema) as bridge:
        await bridge.wait_ready()  # session and subscriptions exist now
    await asyncio.to_thread(publish, broker.host, broker.port, messages, timeout=3600)
    conn = await asyncpg.connect(DSN)
    try:
        started = time.perf_counter()
        with bridge_process(broker, schema) as bridge:
            assert bridge.proc is not None
            sampler = Sampler(bridge.proc.pid)
            while await history_count(conn, schema) < len(messages):
                sampler.sample()
                await asyncio.sleep(0.2)
            elapsed = time.perf_counter() - started
            cpu = sampler.cpu_seconds()
    finally:
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


async def bare_subscriber(broker: MosquittoProcess, messages: list[tuple[str, bytes]]) -> dict[str, float]:
    """Ceiling (a): aiomqtt QoS 1 subscriber with JSON parsing and nothing else."""
    async with persistent_client(broker, "bench-bare", subscribe=True):
        pass
    await asyncio.to_thread(publish, broker.host, broker.port, messages, timeout=3600)
    started = time.perf_counter()
    received = 0
    async with persistent_client(broker, "bench-bare") as client:
        async for message in client.messages:
            orjson.loads(message.payload)
            received += 1
            if received == len(messages):
                break
    elapsed = time.perf_counter() - started
    return {"rate": received / elapsed, "seconds": elapsed}


def parsed_batches(messages: list[tuple[str, bytes]], size: int) -> list[Batch]:
    now = datetime.now(UTC)
    rules = ParseRules(topic_prefix=PREFIX)
    readings = [r for t, p in messages if isinstance(r := parse_message(t, p, now, rules), Reading)]
    return [Batch(readings=readings[i : i + size]) for i in range(0, len(readings), size)]


async def database_alone(messages: list[tuple[str, bytes]], size: int = 2000) -> dict[str, float]:
    """Ceiling (b): the bridge's own SQL (Writer) fed pre-parsed batches back to back."""
    schema = "bench_db"
    await fresh_schema(schema)
    batches = parsed_batches(messages, size)
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=2)
    try:
        writer = Writer(PgStore(pool, schema), Metrics(), Health())
        started = time.perf_counter()
        for batch in batches:
            await writer.write(batch)
        elapsed = time.perf_counter() - started
    finally:
        async with pool.acquire() as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await pool.close()
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
                reading = parse_message(message.topic.value, message.payload, datetime.now(UTC), rules)
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
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    return {"rate": received / elapsed, "seconds": elapsed}


def histogram_quantile(text: str, name: str, q: float) -> float:
    """The q-quantile of a Prometheus histogram (all label sets summed), by bucket upper bound."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    total = buckets.get(float("inf"), 0.0)
    for bound in sorted(buckets):
        if total and buckets[bound] >= q * total:
            return bound
    return float("nan")


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
    bridge, bare, database, seed = (results[k] for k in ("bridge", "bare", "database", "seed"))
    ceiling = min(bare["rate"], database["rate"])
    print(f"\n| measurement ({drain_n:,} readings) | msg/s | bridge / this |\n|---|---:|---:|")
    print(f"| bridge drain | {bridge['rate']:,.0f} | 1.00 |")
    rows = [
        ("ceiling (a): bare aiomqtt subscriber + JSON", bare),
        ("ceiling (b): database alone, bridge SQL", database),
        (f"seed: one transaction per reading ({seed_n:,})", seed),
    ]
    for label, result in rows:
        print(f"| {label} | {result['rate']:,.0f} | {bridge['rate'] / result['rate']:.2f} |")
    print(f"| min(a, b) | {ceiling:,.0f} | {bridge['rate'] / ceiling:.2f} |")
    print(f"\nDrain: bridge CPU {bridge['cpu_pct']:.0f} % of one core, peak RSS {bridge['peak_rss_mib']:.0f} MiB")


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="100k drain, 1 min steady state (default)")
    mode.add_argument("--full", action="store_true", help="1M drain, 5 min steady state")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--skip-steady", action="store_true", help="only the drain measurements")
    parts.add_argument("--only-steady", action="store_true", help="only the steady-state measurement")
    args = parser.parse_args()
    drain_n, seed_n, steady_min = (1_000_000, 30_000, 5.0) if args.full else (100_000, 10_000, 1.0)

    broker = MosquittoProcess("/usr/sbin/mosquitto")
    broker.start()
    results: dict[str, dict[str, float]] = {}
    try:
        print(f"# {platform.node()}: {os.cpu_count()} cores, python {platform.python_version()}", file=sys.stderr)
        if not args.only_steady:
            messages = backlog(drain_n)
            results["bridge"] = await bridge_drain(broker, messages)
            results["bare"] = await bare_subscriber(broker, messages)
            results["database"] = await database_alone(messages)
            results["seed"] = await one_transaction_per_reading(broker, backlog(seed_n))
            print(results, file=sys.stderr)
        if not args.skip_steady:
            results["steady"] = await steady_state(broker, 10_000, steady_min)
    finally:
        broker.close()

    if not args.only_steady:
        print_drain_table(drain_n, seed_n, results)
    if "steady" in results:
        print(f"\n| steady state, 10,000 pairs, real time, {steady_min:g} min | value |\n|---|---:|")
        for key, value in results["steady"].items():
            print(f"| {key} | {value:.3g} |")


if __name__ == "__main__":
    asyncio.run(main())
