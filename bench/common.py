"""What the ingest benchmarks share: a backlog of fleet readings, a fresh schema,
the daemon as a subprocess, its CPU and memory, and histogram quantiles."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import psutil

from bridge import clock
from bridge.schema.migrate import apply_migrations
from bridge.schema.partitions import run_maintenance
from bridge.streams import HISTORY_TABLES
from tests.support.helpers import BridgeProcess
from tests.support.services import MosquittoProcess

DSN = os.environ.get("FLEET_BRIDGE_DB_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = "bench/"
LOGS = Path(tempfile.mkdtemp(prefix="bench-logs-"))


def backlog(n: int, devices: int = 10_000, start: datetime | None = None) -> list[tuple[str, bytes]]:
    """n readings, alternating meter and vehicle, one per device per minute, from
    ``start`` (default: so that the last minute is just past)."""
    if start is None:
        start = clock.now().replace(second=0, microsecond=0) - timedelta(minutes=n // (2 * devices) + 2)
    out = []
    for i in range(n // 2):
        device, minute = i % devices, i // devices
        ts = (start + timedelta(minutes=minute, milliseconds=device)).isoformat().replace("+00:00", "Z")
        meter = {"ts": ts, "kwh_consumed_ac": 0.5, "power_kw": 30.0, "voltage_v": 230.0, "current_a": 130.0,
                 "seq": minute}  # fmt: skip
        vehicle = {"ts": ts, "kwh_delivered_dc": 0.45, "power_kw": 27.0, "soc_pct": 50.0, "battery_temp_c": 30.0,
                   "seq": minute}  # fmt: skip
        out.append((f"{PREFIX}meter/MTR-{device:05d}", orjson.dumps(meter)))
        out.append((f"{PREFIX}vehicle/EV-{device:05d}", orjson.dumps(vehicle)))
    return out


async def map_pairs(conn: asyncpg.Connection, schema: str, devices: int = 10_000) -> None:
    """EV-n is charged through MTR-n, as the simulated fleets here are."""
    await conn.execute(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id)'
        " SELECT format('EV-%s', lpad(d::text, 5, '0')), format('MTR-%s', lpad(d::text, 5, '0'))"
        " FROM generate_series(0, $1 - 1) d",
        devices,
    )


async def fresh_schema(schema: str) -> None:
    """Migrated, today's partitions made, the fleet's pairs mapped (so the daemon's
    efficiency roll-up has the work it would have in production)."""
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await apply_migrations(conn, schema)
        await run_maintenance(conn, schema, premake_days=1, retention_days=400)
        await map_pairs(conn, schema)
    finally:
        await conn.close()


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def history_count(conn: asyncpg.Connection, schema: str) -> int:
    total = 0
    for table in HISTORY_TABLES:
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
        self.cpu_start = self.cpu()

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self.process.memory_info().rss)

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self.rss())

    def cpu_seconds(self) -> float:
        return self.cpu() - self.cpu_start


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
