"""/metrics and /readyz of the real daemon: every contract metric with its type and
labels, counts that agree with the database, ingest lag taken from the devices'
timestamps, stale devices counted, and readiness that follows the database."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest

from bridge import __version__, clock
from tests.support.helpers import BridgeProcess, Scrape, meter_payload, publish_async, vehicle_payload, wait_for
from tests.support.tcp_proxy import TcpProxy, through_proxy

pytestmark = [pytest.mark.integration, pytest.mark.clock]

# docs/contract.md section 8: name -> (type, label names).
CONTRACT_METRICS = {
    "fleet_bridge_messages_received_total": ("counter", {"stream"}),
    "fleet_bridge_rows_written_total": ("counter", {"stream"}),
    "fleet_bridge_duplicates_total": ("counter", {"stream"}),
    "fleet_bridge_messages_rejected_total": ("counter", {"reason"}),
    "fleet_bridge_ingest_lag_seconds": ("histogram", {"stream"}),
    "fleet_bridge_pipeline_latency_seconds": ("histogram", set()),
    "fleet_bridge_batch_rows": ("histogram", set()),
    "fleet_bridge_batch_commit_seconds": ("histogram", set()),
    "fleet_bridge_inflight_messages": ("gauge", set()),
    "fleet_bridge_mqtt_connected": ("gauge", set()),
    "fleet_bridge_mqtt_reconnects_total": ("counter", set()),
    "fleet_bridge_db_errors_total": ("counter", {"kind"}),
    "fleet_bridge_last_commit_timestamp_seconds": ("gauge", set()),
    "fleet_bridge_devices_stale": ("gauge", {"stream"}),
    "fleet_bridge_sequence_gaps_total": ("counter", {"stream"}),
    "fleet_bridge_build_info": ("gauge", {"version", "python", "mqtt_reader"}),
    "fleet_bridge_rollup_lag_seconds": ("gauge", set()),
    "fleet_bridge_rollup_hours_total": ("counter", set()),
    "fleet_bridge_correlation_unmatched_ratio": ("gauge", set()),
}
# prometheus-client's process and platform collectors, as families.
PROCESS_FAMILIES = ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds", "python_info")
# promtool's linter reads "hours" in a name as a unit of time; this one counts
# vehicle-hours (its name is fixed by the contract), so it is left out of the lint.
NOT_LINTED = "fleet_bridge_rollup_hours_"
STREAMS = ("meter", "vehicle")
STALE_AFTER_S = 240  # between the fresh readings (seconds old) and the old ones (10 min)
OLD = timedelta(minutes=10)


def load_with_faults(prefix: str, now: datetime) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """Fresh and 10-minute-old readings, duplicates, rejects (one of them twice) and a
    seq gap; plus what the bridge must count for them."""
    ages = (timedelta(seconds=60), timedelta(0))
    fresh_meter = [
        (f"{prefix}meter/MTR-{d:03d}", meter_payload(now - age, seq=seq))
        for d in range(10)
        for age, seq in zip(ages, (1, 3) if d == 0 else (1, 2), strict=True)  # MTR-000 skips seq 2
    ]
    fresh_vehicle = [(f"{prefix}vehicle/EV-{d:03d}", vehicle_payload(now - age)) for d in range(10) for age in ages]
    old = [(f"{prefix}meter/MTR-OLD-{d}", meter_payload(now - OLD)) for d in range(3)]
    old += [(f"{prefix}vehicle/EV-OLD-{d}", vehicle_payload(now - OLD)) for d in range(2)]
    rejects = [
        (f"{prefix}meter/MTR-900", b"{not json"),
        (f"{prefix}vehicle/EV-900", b'{"kwh_delivered_dc": 0.1}'),
        (f"{prefix}meter/MTR-901", meter_payload("2026-11-27T12:00:00")),
        (f"{prefix}vehicle/EV-901", vehicle_payload(now + timedelta(hours=1))),
        (f"{prefix}meter/-bad", meter_payload(now)),
    ]
    duplicates = fresh_meter[:5] + fresh_vehicle[:3]
    messages = fresh_meter + fresh_vehicle + old + rejects + duplicates + rejects[:1]
    expected = {
        "meter": {"fresh": len(fresh_meter), "old": 3, "duplicates": 5},
        "vehicle": {"fresh": len(fresh_vehicle), "old": 2, "duplicates": 3},
        "received": len(messages),
        "rejects": len(rejects),
    }
    return messages, expected


async def table_count(db: asyncpg.Connection, schema: str, table: str) -> int:
    value = await db.fetchval(f'SELECT count(*) FROM "{schema}".{table}')
    assert isinstance(value, int)
    return value


async def test_metrics_after_a_load_agree_with_the_database(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """After a small load with duplicates, rejects and 10-minute-old readings, one scrape
    has every contract metric with its type and labels, the process series and the
    build (whose version bridge_started logs too); rows written equal history
    rows, rejects equal ingest_rejects rows (per reason); old readings sit in the
    (300 s, 1200 s] lag buckets; stale devices are counted; promtool accepts it."""
    bridge = start_bridge(FLEET_BRIDGE_METRICS_STALE_AFTER_S=str(STALE_AFTER_S))
    await bridge.wait_ready()
    messages, expected = load_with_faults(prefix, clock.now())
    await publish_async(*broker, messages)

    last: list[Scrape] = []

    async def settled() -> bool:
        last[:] = [await asyncio.to_thread(bridge.scrape)]
        m = last[0]
        return (
            m.value("fleet_bridge_messages_received_total") == expected["received"]
            and m.value("fleet_bridge_inflight_messages") == 0
            and all(m.value("fleet_bridge_devices_stale", stream=s) == expected[s]["old"] for s in STREAMS)
        )

    await wait_for(settled, timeout=120, what="every message committed and the stale gauge updated")
    m = last[0]

    for name, (kind, labels) in CONTRACT_METRICS.items():
        family = m.families.get(name.removesuffix("_total") if kind == "counter" else name)
        assert family is not None, f"{name} missing"
        assert family.type == kind, name
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)

    assert set(PROCESS_FAMILIES) <= set(m.families)
    assert m.value("process_resident_memory_bytes") > 0
    assert m.value("fleet_bridge_build_info", version=__version__, mqtt_reader="fast") == 1
    (started,) = [line for line in bridge.logs().splitlines() if '"event": "bridge_started"' in line]
    assert orjson.loads(started)["version"] == __version__

    for stream in STREAMS:
        history = await table_count(db, schema, f"{stream}_telemetry_history")
        assert history == expected[stream]["fresh"] + expected[stream]["old"]
        assert m.value("fleet_bridge_rows_written_total", stream=stream) == history
        assert m.value("fleet_bridge_duplicates_total", stream=stream) == expected[stream]["duplicates"]
    rejects = {
        r["reason"]: r["n"]
        for r in await db.fetch(f'SELECT reason, count(*) AS n FROM "{schema}".ingest_rejects GROUP BY 1')
    }
    assert sum(rejects.values()) == expected["rejects"]
    assert m.by_label("fleet_bridge_messages_rejected_total", "reason") == rejects
    assert set(rejects) == {"invalid_json", "missing_field", "bad_timestamp", "future_timestamp", "bad_device_id"}

    lag = "fleet_bridge_ingest_lag_seconds"
    for stream in STREAMS:
        assert m.bucket(lag, 1200, stream=stream) - m.bucket(lag, 300, stream=stream) == expected[stream]["old"]
        assert m.bucket(lag, float("inf"), stream=stream) == m.bucket(lag, 1200, stream=stream)
        assert m.bucket(lag, 300, stream=stream) >= expected[stream]["fresh"]

    # Every message passes through exactly one committed batch.
    assert m.value("fleet_bridge_batch_rows_sum") == expected["received"]
    assert m.value("fleet_bridge_pipeline_latency_seconds_count") == expected["received"]
    assert m.value("fleet_bridge_batch_commit_seconds_count") == m.value("fleet_bridge_batch_rows_count") > 0
    assert m.value("fleet_bridge_sequence_gaps_total", stream="meter") == 1
    assert m.value("fleet_bridge_db_errors_total") == 0
    assert m.value("fleet_bridge_mqtt_connected") == 1
    assert 0 < m.value("fleet_bridge_last_commit_timestamp_seconds") <= clock.now().timestamp()

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("everything else passed; promtool check metrics not run: install the Debian package 'prometheus'")
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    linted = "".join(line for line in m.text.splitlines(keepends=True) if NOT_LINTED not in line)
    output, _ = await asyncio.wait_for(proc.communicate(linted.encode()), timeout=60)
    assert proc.returncode == 0, output.decode()


@pytest.mark.fault
async def test_readyz_follows_the_database(
    pg_dsn: str, db: asyncpg.Connection, start_bridge: Callable[..., BridgeProcess]
) -> None:
    """/readyz answers 503 naming the database while PostgreSQL is unreachable and 200
    again once it is back; /healthz stays 200 (the process is alive) throughout."""
    target = urlsplit(pg_dsn)
    async with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        bridge = start_bridge(FLEET_BRIDGE_DB_DSN=through_proxy(pg_dsn, proxy))
        await bridge.wait_ready()

        async def readyz_is(status: int) -> bool:
            got, body = await asyncio.to_thread(bridge.http_get, "/readyz")
            return got == status and (status == 200 or "database" in body)

        await proxy.cut()
        await wait_for(lambda: readyz_is(503), timeout=60, what="/readyz 503 while the database is unreachable")
        assert (await asyncio.to_thread(bridge.http_get, "/healthz"))[0] == 200

        await proxy.restore()
        await wait_for(lambda: readyz_is(200), timeout=60, what="/readyz 200 once the database is back")
