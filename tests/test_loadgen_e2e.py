"""End to end: fleet-loadgen -> Mosquitto -> the real daemon -> fleet-bridge report,
checked against the ground truth the load generator wrote."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest

from bridge.commands.report import DECIMALS
from tests.support.helpers import BridgeProcess, run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALL_FAULTS = ["--duplicates", "0.05", "--out-of-order", "0.05", "--late", "0.05", "--malformed", "0.05",
              "--skew-over-5s", "0.05"]  # fmt: skip


async def cli(env: dict[str, str], module: str, *argv: str) -> str:
    """Run ``python -m MODULE ARGV`` with ``env``; its stdout, or a failure showing stderr."""
    done = await asyncio.to_thread(run_cli, argv, env, module=module)
    assert done.returncode == 0, f"{module} {' '.join(argv)} exited {done.returncode}: {done.stderr}"
    return done.stdout


REPORT_ROUNDING = 0.5 * 10**-DECIMALS


async def count(db: asyncpg.Connection, schema: str, table: str) -> int:
    value = await db.fetchval(f'SELECT count(*) FROM "{schema}".{table}')
    assert isinstance(value, int)
    return value


def same_row(report: dict[str, object], truth: dict[str, object]) -> bool:
    """Keys and counts exactly; sums and efficiency to the report's six decimals (the
    truth is not rounded, and adds in another order)."""
    if report.keys() != truth.keys():
        return False
    for key, expected in truth.items():
        actual = report[key]
        if isinstance(expected, float) and isinstance(actual, float):
            if actual != pytest.approx(expected, rel=1e-9, abs=REPORT_ROUNDING):
                return False
        elif actual != expected:
            return False
    return True


async def test_report_equals_the_ground_truth_with_every_fault_on(
    db: asyncpg.Connection,
    schema: str,
    bridge_env: dict[str, str],
    start_bridge: Callable[..., BridgeProcess],
    tmp_path: Path,
) -> None:
    """20 pairs, two simulated hours at speedup 1800 from two processes, 5 % of each
    fault: every distinct valid reading is stored once, every malformed message is in
    ingest_rejects under the reason it was made for, and the report for every vehicle
    and hour equals ground_truth.json."""
    bridge = start_bridge()
    await bridge.wait_ready()
    out = tmp_path / "loadgen"
    # bridge_env carries the broker address and this test's topic prefix.
    await cli(bridge_env, "loadgen", "run", "--devices", "20", "--duration", "2h", "--speedup", "1800",
              "--processes", "2", "--seed", "42", "--out", str(out), *ALL_FAULTS)  # fmt: skip
    summary = orjson.loads((out / "summary.json").read_bytes())
    truth = orjson.loads((out / "ground_truth.json").read_bytes())
    assert all(summary["faults"][kind] > 0 for kind in summary["faults"]), summary["faults"]

    async def all_in() -> bool:
        stored = await count(db, schema, "meter_telemetry_history") + await count(
            db, schema, "vehicle_telemetry_history"
        )
        rejected = await count(db, schema, "ingest_rejects")
        readings: int = summary["readings"]
        malformed: int = summary["faults"]["malformed"]
        assert stored <= readings, "more rows than distinct readings"
        return stored == readings and rejected >= malformed

    await wait_for(all_in, timeout=120, what=f"{summary['readings']} readings and the rejects")
    rejects = await db.fetch(f'SELECT reason, count(*) AS n FROM "{schema}".ingest_rejects GROUP BY reason')
    assert {r["reason"]: r["n"] for r in rejects} == summary["malformed_by_reason"]

    await cli(bridge_env, "bridge", "mapping", "import", str(out / "mapping.csv"))
    start = datetime.fromisoformat(summary["start"]) - timedelta(hours=1)
    end = datetime.fromisoformat(summary["end"]) + timedelta(hours=1)
    report = orjson.loads(
        await cli(
            bridge_env, "bridge", "report", "--from", start.isoformat(), "--to", end.isoformat(), "--format", "json"
        )
    )
    assert len(report) == len(truth)
    mismatches = [(r, t) for r, t in zip(report, truth, strict=True) if not same_row(r, t)]
    assert not mismatches, mismatches[:5]
    assert sum(row["unmatched"] for row in truth) == summary["faults"]["skew_over_5s"]
