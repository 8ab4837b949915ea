"""The daemon's background chores beside the ingest path: partition maintenance,
and the stale-device count (which also keeps /readyz honest about the database
while no batch is being written)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import structlog

from bridge import clock
from bridge.config import Settings
from bridge.db import TRANSIENT_ERRORS, qualified
from bridge.metrics import Health, Metrics
from bridge.schema.partitions import run_maintenance
from bridge.streams import STREAMS

__all__ = ["maintenance_loop", "stale_loop"]

log = structlog.get_logger("bridge.ingest.housekeeping")


async def maintenance_loop(pool: asyncpg.Pool, settings: Settings) -> None:
    """Premake and drop day partitions every ``partitions.maintenance_interval_s``."""
    parts = settings.partitions
    while True:
        try:
            async with pool.acquire() as conn:
                result = await run_maintenance(conn, settings.db.schema, parts.premake_days, parts.retention_days)
            if result.created or result.dropped:
                log.info("partitions_maintained", created=result.created, dropped=result.dropped)
        except TRANSIENT_ERRORS as exc:
            log.warning("maintenance_failed", error=str(exc)[:300])
        await asyncio.sleep(parts.maintenance_interval_s)


async def stale_loop(pool: asyncpg.Pool, settings: Settings, metrics: Metrics, health: Health) -> None:
    """Count the devices without a reading for ``metrics.stale_after_s``."""
    schema = settings.db.schema
    stale_after = timedelta(seconds=settings.metrics.stale_after_s)
    while True:
        try:
            async with pool.acquire() as conn:
                cutoff = clock.now() - stale_after
                for spec in STREAMS.values():
                    stale = await conn.fetchval(
                        f"SELECT count(*) FROM {qualified(schema, spec.current_table)} WHERE recorded_at < $1", cutoff
                    )
                    metrics.devices_stale.labels(spec.name).set(stale)
            health.db_ok = True
        except TRANSIENT_ERRORS as exc:
            health.db_ok = False
            log.warning("db_check_failed", error=str(exc)[:300])
        await asyncio.sleep(settings.metrics.stale_check_interval_s)
