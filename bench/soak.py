"""Soak: the bridge for an hour at ten times the fleet's rate, sampled every minute.

    .venv/bin/python -m bench.soak                 # 60 min, 99,999 pairs (3,333 readings/s)
    .venv/bin/python -m bench.soak --minutes 10 --pairs 20000

The load generator runs ten times the fleet in real time (99,999 vehicle/meter
pairs, one reading each per minute, fresh timestamps), so ingest lag means what
it means in production. Every minute: the daemon's RSS, its CPU over the minute
(% of one core), and the p50/p99 ingest lag of the readings committed in that
minute (from the lag histogram's buckets). At the end: a table, and the slope of
each series (least squares, per hour): RSS should not grow, lag should not grow.
Not a test: run it on a quiet machine. Needs what bench.ingest needs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

import uvloop

from bench.common import LOGS, PREFIX, Sampler, bridge_process, drop_schema, fresh_schema
from tests.support.helpers import BridgeProcess, Scrape
from tests.support.services import ROOT, MosquittoProcess

SCHEMA = "bench_soak"
LOADGEN_LOG = LOGS / "soak-loadgen.log"
LAG = "fleet_bridge_ingest_lag_seconds"


def lag_buckets(scrape: Scrape) -> dict[float, float]:
    """Cumulative counts of the ingest-lag histogram, streams summed, by upper bound."""
    buckets: dict[float, float] = {}
    for family in scrape.families.values():
        for sample in family.samples:
            if sample.name == LAG + "_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The q-quantile (a bucket's upper bound) of what was observed between two scrapes."""
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    total = delta.get(float("inf"), 0.0)
    for bound in sorted(delta):
        if total and delta[bound] >= q * total:
            return bound
    return float("nan")


def slope_per_hour(values: list[float]) -> float:
    """Least-squares slope of one sample a minute, per hour."""
    if len(values) < 2:
        return float("nan")
    return statistics.linear_regression(range(len(values)), values).slope * 60


async def soak(broker: MosquittoProcess, pairs: int, minutes: int) -> list[dict[str, float]]:
    await fresh_schema(SCHEMA)
    env = {**os.environ, "FLEET_BRIDGE_MQTT_PORT": str(broker.port), "FLEET_BRIDGE_MQTT_TOPIC_PREFIX": PREFIX}
    rows: list[dict[str, float]] = []
    try:
        with bridge_process(broker, SCHEMA) as bridge, LOADGEN_LOG.open("w") as errors:
            await bridge.wait_ready()
            loadgen = subprocess.Popen(
                [sys.executable, "-m", "loadgen", "run", "--devices", str(pairs), "--interval", "60",
                 "--duration", f"{minutes}m", "--speedup", "1", "--out", tempfile.mkdtemp(prefix="bench-soak-")],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors, text=True,
            )  # fmt: skip
            try:
                rows = await sample_every_minute(bridge, loadgen, minutes)
            finally:
                loadgen.terminate()
                loadgen.wait(60)
    finally:
        await drop_schema(SCHEMA)
    return rows


async def sample_every_minute(
    bridge: BridgeProcess, loadgen: subprocess.Popen[str], minutes: int
) -> list[dict[str, float]]:
    assert bridge.proc is not None
    sampler = Sampler(bridge.proc.pid)
    rows = []
    before, cpu_before, started = lag_buckets(bridge.scrape()), sampler.cpu(), time.monotonic()
    for minute in range(1, minutes + 1):
        await asyncio.sleep(max(0.0, started + 60 * minute - time.monotonic()))
        if loadgen.poll() is not None and minute < minutes:
            raise SystemExit(f"the load generator stopped early (exit {loadgen.returncode}): see {LOADGEN_LOG}")
        scrape = await asyncio.to_thread(bridge.scrape)
        after, cpu = lag_buckets(scrape), sampler.cpu()
        row = {
            "minute": minute,
            "rss_mib": sampler.rss() / 2**20,
            "cpu_pct": 100 * (cpu - cpu_before) / 60,
            "lag_p50_s": quantile(before, after, 0.5),
            "lag_p99_s": quantile(before, after, 0.99),
            "committed": after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0),
        }
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), file=sys.stderr, flush=True)
        before, cpu_before = after, cpu
    return rows


def report(rows: list[dict[str, float]], pairs: int) -> None:
    print("\n| minute | readings committed | RSS MiB | CPU % of a core | lag p50 s | lag p99 s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['minute']:.0f} | {row['committed']:,.0f} | {row['rss_mib']:.1f} | {row['cpu_pct']:.1f} "
              f"| {row['lag_p50_s']:g} | {row['lag_p99_s']:g} |")  # fmt: skip
    print(f"\nSlopes per hour ({pairs:,} pairs, {len(rows)} minutes):")
    for key, unit in (("rss_mib", "MiB"), ("cpu_pct", "% of a core"), ("lag_p99_s", "s (p99 lag)")):
        print(f"- {key}: {slope_per_hour([row[key] for row in rows]):+.3g} {unit} per hour")


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument(
        "--pairs", type=int, default=99_999, help="vehicle/meter pairs (10x the fleet; 99,999 is the generator's most)"
    )
    args = parser.parse_args()
    broker = MosquittoProcess("/usr/sbin/mosquitto")
    broker.start()
    try:
        rows = await soak(broker, args.pairs, args.minutes)
    finally:
        broker.close()
    report(rows, args.pairs)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
