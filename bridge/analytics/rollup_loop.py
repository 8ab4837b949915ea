"""The daemon's roll-up: one pass every ``FLEET_BRIDGE_ROLLUP_INTERVAL_S`` (0 turns
it off), on a connection of its own so that ingest's pool never waits for it.

Replicas take turns through the roll-up lock: one that finds it held skips the
pass. Every replica still refreshes the roll-up gauges (they describe the
database, so each reports the same numbers, like ``fleet_bridge_devices_stale``).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import structlog

from bridge import clock
from bridge.analytics.rollup import retained_from, rollup_lag, rollup_lock, run_pass, unmatched_ratio
from bridge.config import Settings
from bridge.db import TRANSIENT_ERRORS, connect
from bridge.errors import DatabaseUnavailableError
from bridge.metrics import Metrics

__all__ = ["rollup_loop"]

log = structlog.get_logger("bridge.analytics.rollup_loop")


async def _tick(conn: asyncpg.Connection, settings: Settings, metrics: Metrics) -> None:
    schema, settle = settings.db.schema, timedelta(seconds=settings.rollup.settle_s)
    async with rollup_lock(conn, schema, wait=None) as ours:
        if ours:
            now = clock.now()
            keep_from = retained_from(now, settings.partitions.retention_days)
            result = await run_pass([conn], schema, now=now, settle=settle, keep_from=keep_from)
            metrics.rollup_hours.inc(result.total)
            if result.vehicle_hours:
                log.info(
                    "rollup_pass", hours=len(result.vehicle_hours), vehicle_hours=result.total,
                    invalidations=result.invalidations, seconds=round(result.seconds, 2),
                )  # fmt: skip
    metrics.rollup_lag.set(await rollup_lag(conn, schema, now=clock.now(), settle=settle))
    metrics.unmatched_ratio.set(await unmatched_ratio(conn, schema))


async def rollup_loop(settings: Settings, metrics: Metrics) -> None:
    """Run until cancelled; a failed pass is logged and tried again next interval."""
    interval = settings.rollup.interval_s
    if not interval:
        return
    conn: asyncpg.Connection | None = None
    try:
        while True:
            try:
                if conn is None:
                    conn = await connect(settings)
                await _tick(conn, settings, metrics)
            except (*TRANSIENT_ERRORS, DatabaseUnavailableError) as exc:
                log.warning("rollup_failed", error=type(exc).__name__, detail=str(exc)[:300])
                if conn is not None:
                    conn.terminate()  # its session (and the lock, if held) ends with it
                    conn = None
            await asyncio.sleep(interval)
    finally:
        if conn is not None:
            conn.terminate()
