"""Scale-out benchmark: how fast 1, 2, 3... bridge replicas in one MQTT shared
group drain a backlog queued in their sessions, and the CPU each one uses.

    .venv/bin/python -m bench.scaling                          # 200,000 readings; 1, 2, 3 replicas; twice
    .venv/bin/python -m bench.scaling --readings 100000 --replicas 1,2,3,4 --repeat 3

For each replica count: the replicas start once (creating their persistent
sessions in a fresh group) and stop; the backlog is published (Mosquitto
queues it round-robin across the stopped sessions); then all replicas start at
once and the script polls PostgreSQL until every reading is stored. Reported:

- drain rate: readings/s while history went from 10% to 90% of the backlog
  (start-up and tail excluded), and over the whole drain from process start;
- CPU of each replica, the broker, the replicas' PostgreSQL backends, and of
  every other process on the machine, in % of one core over the whole drain
  (CPU time / wall time; 200% is all of a 2-core machine). "Other processes"
  includes this script's polling and PostgreSQL's background writers, and says
  how quiet the machine was;
- the load average before the run (it includes the previous measurement);
- the rate at which one QoS 1 publisher got the backlog into the broker.

Needs PostgreSQL (FLEET_BRIDGE_DB_DSN, default the local `test` database) and the
mosquitto binary (a private broker with deploy/mosquitto/mosquitto.conf is
started). Uses and drops the schema bench_scaling. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import DSN, history_count
from bridge.schema.migrate import apply_migrations
from bridge.schema.partitions import run_maintenance
from tests.support.helpers import BridgeProcess, publish
from tests.support.services import MosquittoProcess

SCHEMA = "bench_scaling"
DEVICES = 10_000  # pairs: the contract's fleet, one meter and one vehicle reading per minute each


def backlog(prefix: str, n: int) -> list[tuple[str, bytes]]:
    """``n`` readings of the fleet, alternating meter and vehicle, minute after minute."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=n // (2 * DEVICES) + 2)
    out = []
    for i in range(n // 2):
        device, minute = i % DEVICES, i // DEVICES
        ts = (start + timedelta(minutes=minute, milliseconds=device)).isoformat().replace("+00:00", "Z")
        meter = {"ts": ts, "kwh_consumed_ac": 0.5, "power_kw": 30.0, "voltage_v": 230.0, "seq": minute}
        vehicle = {"ts": ts, "kwh_delivered_dc": 0.45, "power_kw": 27.0, "soc_pct": 50.0, "seq": minute}
        out.append((f"{prefix}meter/MTR-{device:05d}", orjson.dumps(meter)))
        out.append((f"{prefix}vehicle/EV-{device:05d}", orjson.dumps(vehicle)))
    return out


@dataclasses.dataclass
class Replica:
    client_id: str
    bridge: BridgeProcess
    cpu: psutil.Process | None = None

    def start(self) -> None:
        self.bridge.start()
        assert self.bridge.proc is not None
        self.cpu = psutil.Process(self.bridge.proc.pid)

    def cpu_seconds(self) -> float:
        assert self.cpu is not None
        times = self.cpu.cpu_times()
        return float(times.user + times.system)


def replicas_for(broker: MosquittoProcess, run: str, count: int, prefix: str) -> list[Replica]:
    logs = Path(tempfile.mkdtemp(prefix=f"bench-scaling-{run}-"))
    out = []
    for n in range(count):
        env = {
            "FLEET_BRIDGE_DB_DSN": DSN,
            "FLEET_BRIDGE_DB_SCHEMA": SCHEMA,
            "FLEET_BRIDGE_MQTT_PORT": str(broker.port),
            "FLEET_BRIDGE_MQTT_CLIENT_ID": f"bench-{run}-{n}",
            "FLEET_BRIDGE_MQTT_SHARED_GROUP": f"bench-{run}",
            "FLEET_BRIDGE_MQTT_TOPIC_PREFIX": prefix,
            "FLEET_BRIDGE_METRICS_HOST": "127.0.0.1",
            "FLEET_BRIDGE_LOG_LEVEL": "warning",
        }
        out.append(Replica(f"bench-{run}-{n}", BridgeProcess(env, logs / f"replica-{n}.log")))
    return out


async def wait_ready(replicas: list[Replica]) -> None:
    await asyncio.gather(*(r.bridge.wait_ready(timeout=120) for r in replicas))


def forget_session(broker: MosquittoProcess, client_id: str) -> None:
    """Delete a session at the broker: connect with a clean start and expiry 0."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0
    client.connect(broker.host, broker.port, clean_start=True, properties=props)
    client.disconnect()


def busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores), since boot."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


async def backend_cpu_seconds(conn: asyncpg.Connection, replicas: list[Replica]) -> float:
    """CPU time of the PostgreSQL backends serving the replicas (matched by client port)."""
    ports = set()
    for replica in replicas:
        assert replica.cpu is not None
        ports |= {c.laddr.port for c in replica.cpu.net_connections(kind="tcp") if c.raddr and c.raddr.port == 5432}
    rows = await conn.fetch("SELECT pid, client_port FROM pg_stat_activity WHERE client_port = ANY($1::int[])", ports)
    total = 0.0
    for row in rows:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(row["pid"]).cpu_times()
            total += times.user + times.system
    return total


@dataclasses.dataclass(frozen=True)
class Result:
    replicas: int
    readings: int
    steady_rate: float  # readings/s between 10% and 90% stored
    overall_rate: float  # readings/s from the replicas' start to the last one stored
    seconds: float
    replica_cpu_pct: list[float]
    broker_cpu_pct: float
    db_cpu_pct: float
    other_cpu_pct: float  # everything else on the machine during the drain (this script included)
    load_before: tuple[float, float, float]
    publish_rate: float  # one QoS 1 publisher, queued by the broker for the stopped replicas


async def measure(broker: MosquittoProcess, count: int, readings: int) -> Result:
    run = uuid.uuid4().hex[:8]
    prefix = f"bench-{run}/"
    conn = await asyncpg.connect(DSN)
    replicas = replicas_for(broker, run, count, prefix)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        await apply_migrations(conn, SCHEMA)
        await run_maintenance(conn, SCHEMA, premake_days=1, retention_days=400)
        for r in replicas:  # create the sessions and the group's subscriptions, then stop
            r.start()
        await wait_ready(replicas)
        for r in replicas:
            r.bridge.stop()
        messages = backlog(prefix, readings)
        published = time.perf_counter()
        await asyncio.to_thread(publish, broker.host, broker.port, messages, timeout=3600)
        publish_rate = readings / (time.perf_counter() - published)
        del messages

        load = os.getloadavg()
        assert broker._proc is not None
        broker_proc = psutil.Process(broker._proc.pid)
        broker_cpu = sum(broker_proc.cpu_times()[:2])
        machine_busy = busy_seconds()
        started = time.perf_counter()
        for r in replicas:
            r.start()
        marks: dict[float, float] = {}
        previous = (started, 0)
        stored = 0
        while stored < readings:
            await asyncio.sleep(0.25)
            now, stored = time.perf_counter(), await history_count(conn, SCHEMA)
            for fraction in (0.1, 0.9):
                goal = fraction * readings
                if fraction not in marks and stored >= goal:  # interpolate between polls
                    marks[fraction] = previous[0] + (now - previous[0]) * (goal - previous[1]) / (stored - previous[1])
            previous = (now, stored)
        elapsed = time.perf_counter() - started
        replica_cpu = [r.cpu_seconds() for r in replicas]
        db_cpu = await backend_cpu_seconds(conn, replicas)
        broker_cpu = sum(broker_proc.cpu_times()[:2]) - broker_cpu
        machine_busy = busy_seconds() - machine_busy
    finally:
        for r in replicas:
            r.bridge.stop()
            forget_session(broker, r.client_id)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        await conn.close()
    return Result(
        replicas=count,
        readings=readings,
        steady_rate=0.8 * readings / (marks[0.9] - marks[0.1]),
        overall_rate=readings / elapsed,
        seconds=elapsed,
        replica_cpu_pct=[100 * c / elapsed for c in replica_cpu],
        broker_cpu_pct=100 * broker_cpu / elapsed,
        db_cpu_pct=100 * db_cpu / elapsed,
        other_cpu_pct=100 * (machine_busy - sum(replica_cpu) - broker_cpu - db_cpu) / elapsed,
        load_before=load,
        publish_rate=publish_rate,
    )


def table(results: list[Result]) -> str:
    lines = [
        "| replicas | readings | drain msg/s (10–90%) | msg/s incl. start-up | seconds | CPU per replica (% of a core)"
        " | broker CPU | PostgreSQL backends CPU | other processes CPU | load avg before (1/5/15 min)"
        " | backlog publish msg/s |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        cpu = ", ".join(f"{c:.0f}%" for c in r.replica_cpu_pct)
        load = "/".join(f"{x:.2f}" for x in r.load_before)
        lines.append(
            f"| {r.replicas} | {r.readings:,} | {r.steady_rate:,.0f} | {r.overall_rate:,.0f} | {r.seconds:.1f}"
            f" | {cpu} | {r.broker_cpu_pct:.0f}% | {r.db_cpu_pct:.0f}% | {r.other_cpu_pct:.0f}% | {load}"
            f" | {r.publish_rate:,.0f} |"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--readings", type=int, default=200_000, help="backlog size (default 200,000)")
    parser.add_argument("--replicas", default="1,2,3", help="replica counts to measure (default 1,2,3)")
    parser.add_argument("--repeat", type=int, default=2, help="measurements per replica count (default 2)")
    args = parser.parse_args()
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = MosquittoProcess(binary)
    broker.start()
    print(f"cpus: {os.cpu_count()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", file=sys.stderr)
    results = []
    try:
        for _ in range(args.repeat):
            for count in (int(c) for c in args.replicas.split(",")):
                result = await measure(broker, count, args.readings)
                print(table([result]).splitlines()[-1], file=sys.stderr, flush=True)
                results.append(result)
    finally:
        broker.close()
    print(table(results))


if __name__ == "__main__":
    asyncio.run(main())
