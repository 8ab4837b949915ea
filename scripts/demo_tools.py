"""Small steps of ``scripts/demo.sh`` that are easier in Python than in the shell:
free ports, database probes, waiting for the bridge, and the report-vs-truth check.

Run with the project's virtualenv: ``.venv/bin/python scripts/demo_tools.py COMMAND ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bridge.commands.report import DECIMALS

NO_PROGRESS_TIMEOUT_S = 180.0
PROGRESS_EVERY_S = 10.0
SHOWN_METRICS = tuple(
    f"fleet_bridge_{name}_total" for name in ("messages_received", "rows_written", "duplicates", "messages_rejected")
)


def free_port(preferred: int) -> int:
    """``preferred`` when nothing listens there, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            found: int = sock.getsockname()[1]
            return found
    raise OSError("no free port")


async def db_ok(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    await conn.close()


async def reset_schema(dsn: str, schema: str) -> None:
    """The demo's own schema starts empty, so its report covers this run only."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - a local http:// URL from the script
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""


def wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"demo: {url} did not answer 200 within {timeout:g} s")


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_ingested(metrics_url: str, summary_path: Path, started: float) -> None:
    """Wait until the bridge stored every distinct reading and rejected every
    malformed message; then print the rate it sustained since the load began,
    and its mean batch, which tells whether it was batching or waiting."""
    summary = orjson.loads(summary_path.read_bytes())
    want_rows, want_rejects = summary["readings"], summary["faults"]["malformed"]
    last, last_change, last_shown = -1.0, time.monotonic(), 0.0
    while True:
        try:
            text = http_get(metrics_url)[1]
        except OSError:  # starting, or restarting: the no-progress timeout decides
            text = ""
        rows = metric_sum(text, "fleet_bridge_rows_written_total")
        rejects = metric_sum(text, "fleet_bridge_messages_rejected_total")
        if rows >= want_rows and rejects >= want_rejects:
            break
        now = time.monotonic()
        if rows != last:
            last, last_change = rows, now
        elif now - last_change > NO_PROGRESS_TIMEOUT_S:
            sys.exit(f"demo: the bridge made no progress for {NO_PROGRESS_TIMEOUT_S:g} s (see its log)")
        if now - last_shown >= PROGRESS_EVERY_S:
            last_shown = now
            print(f"  bridge stored {rows:,.0f} of {want_rows:,} readings", flush=True)
        time.sleep(1)
    elapsed = time.time() - started
    batches = metric_sum(text, "fleet_bridge_batch_rows_count")
    mean_batch = metric_sum(text, "fleet_bridge_batch_rows_sum") / max(batches, 1)
    mean_commit = metric_sum(text, "fleet_bridge_batch_commit_seconds_sum") / max(batches, 1)
    print(
        f"bridge ingested {summary['published']:,} messages in {elapsed:,.1f} s: "
        f"{summary['published'] / elapsed:,.0f} msg/s (load generator: {summary['rate_msg_per_s']:,.0f} msg/s); "
        f"{batches:,.0f} batches of {mean_batch:,.0f} messages on average, {mean_commit * 1000:,.1f} ms per commit"
    )


def report_range(summary_path: Path) -> str:
    """``FROM TO`` covering the run with an hour to spare on each side."""
    summary = orjson.loads(summary_path.read_bytes())
    start = datetime.fromisoformat(summary["start"]) - timedelta(hours=1)
    end = datetime.fromisoformat(summary["end"]) + timedelta(hours=1)
    return " ".join(moment.strftime("%Y-%m-%dT%H:%M:%SZ") for moment in (start, end))


def show_metrics(metrics_url: str) -> None:
    """The counters that tell the story of the run: rows, duplicates, rejects."""
    for line in http_get(metrics_url)[1].splitlines():
        if line.startswith(SHOWN_METRICS) and not line.endswith(" 0.0"):
            print(f"  {line}")


def pick_vehicle(truth_path: Path) -> str:
    """The vehicle with the most charging energy: its report is worth looking at."""
    energy: dict[str, float] = {}
    for row in orjson.loads(truth_path.read_bytes()):
        energy[row["vehicle_id"]] = energy.get(row["vehicle_id"], 0.0) + row["total_ac_kwh"]
    return max(sorted(energy), key=lambda vehicle: energy[vehicle])


def same(report: dict[str, Any], truth: dict[str, Any]) -> bool:
    """Equal keys and counts; sums and efficiency to the report's six decimals."""
    if report.keys() != truth.keys():
        return False
    for key, expected in truth.items():
        actual = report[key]
        if isinstance(expected, float) and isinstance(actual, float):
            if abs(actual - expected) > 0.5 * 10**-DECIMALS + 1e-9 * abs(expected):
                return False
        elif actual != expected:
            return False
    return True


def cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def compare(report_path: Path, truth_path: Path, vehicle: str) -> None:
    """One vehicle's report rows beside its ground truth, then the whole fleet's verdict."""
    report, truth = orjson.loads(report_path.read_bytes()), orjson.loads(truth_path.read_bytes())
    mine = [r for r in report if r["vehicle_id"] == vehicle]
    expected = [r for r in truth if r["vehicle_id"] == vehicle]
    columns = ("total_dc_kwh", "total_ac_kwh", "efficiency", "matched", "unmatched")
    print(f"{'hour':<21} {'report: dc / ac / eff / matched / unmatched':<48} ground truth")
    for got, want in zip(mine, expected, strict=False):
        left = " / ".join(cell(got[c]) for c in columns)
        right = " / ".join(cell(want[c]) for c in columns)
        print(f"{got['hour']:<21} {left:<48} {right}  {'ok' if same(got, want) else 'DIFFERENT'}")
    differing = sum(not same(r, t) for r, t in zip(report, truth, strict=False)) + abs(len(report) - len(truth))
    if differing:
        sys.exit(f"demo: {differing} of {len(truth):,} fleet report rows differ from the ground truth")
    print(f"the fleet report equals the ground truth: all {len(truth):,} vehicle-hours")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("free-port").add_argument("preferred", type=int)
    sub.add_parser("db-ok").add_argument("dsn")
    reset = sub.add_parser("reset-schema")
    reset.add_argument("dsn")
    reset.add_argument("schema")
    ready = sub.add_parser("wait-ready")
    ready.add_argument("url")
    ready.add_argument("--timeout", type=float, default=60.0)
    ingested = sub.add_parser("wait-ingested")
    ingested.add_argument("metrics_url")
    ingested.add_argument("summary", type=Path)
    ingested.add_argument("started", type=float, help="Unix time the load generator started")
    sub.add_parser("report-range").add_argument("summary", type=Path)
    sub.add_parser("show-metrics").add_argument("metrics_url")
    sub.add_parser("pick-vehicle").add_argument("truth", type=Path)
    comparison = sub.add_parser("compare")
    comparison.add_argument("report", type=Path)
    comparison.add_argument("truth", type=Path)
    comparison.add_argument("vehicle")
    args = parser.parse_args()

    if args.command == "free-port":
        print(free_port(args.preferred))
    elif args.command == "db-ok":
        try:
            asyncio.run(db_ok(args.dsn))
        except Exception:  # noqa: BLE001 - any failure means this database is not usable as is
            sys.exit(1)
    elif args.command == "reset-schema":
        asyncio.run(reset_schema(args.dsn, args.schema))
    elif args.command == "wait-ready":
        wait_ready(args.url, args.timeout)
    elif args.command == "wait-ingested":
        wait_ingested(args.metrics_url, args.summary, args.started)
    elif args.command == "report-range":
        print(report_range(args.summary))
    elif args.command == "show-metrics":
        show_metrics(args.metrics_url)
    elif args.command == "pick-vehicle":
        print(pick_vehicle(args.truth))
    else:
        compare(args.report, args.truth, args.vehicle)


if __name__ == "__main__":
    main()
