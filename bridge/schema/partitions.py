"""Daily partitions of the history and roll-up tables: pure date arithmetic plus the few
statements that create and drop them (through the SECURITY DEFINER functions of
the schema, so the ingest role needs no ownership)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

from bridge import clock
from bridge.db import Conn, qualified
from bridge.streams import HISTORY_TABLES

__all__ = [
    "DAY_PARTITIONED_TABLES",
    "ROLLUP_TABLES",
    "MaintenanceResult",
    "days_to_premake",
    "drop_cutoff",
    "ensure_partitions",
    "partition_name",
    "run_maintenance",
]

# Every table partitioned by UTC day: the roll-up's days are premade and dropped
# with history's, so a report never finds a rolled-up hour whose readings are gone.
ROLLUP_TABLES = ("efficiency_hourly", "efficiency_fleet_hourly")
DAY_PARTITIONED_TABLES = (*HISTORY_TABLES, *ROLLUP_TABLES)
MAINTENANCE_LOCK = "fleet_bridge.maintenance"
# Retention keeps one extra day, so a reading accepted just before midnight (when
# the window moves) still finds its partition.
RETENTION_GRACE_DAYS = 1


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def days_to_premake(today: date, premake_days: int) -> list[date]:
    """Today and the next ``premake_days`` days."""
    return [today + timedelta(days=n) for n in range(premake_days + 1)]


def drop_cutoff(today: date, retention_days: int) -> date:
    """Partitions of days before this date are dropped by maintenance."""
    return today - timedelta(days=retention_days + RETENTION_GRACE_DAYS)


async def ensure_partitions(conn: Conn, schema: str, table: str, days: Iterable[date]) -> list[date]:
    """Create the missing day partitions of ``table``; returns the days created."""
    created = []
    for day in sorted(set(days)):
        made = await conn.fetchval(f"SELECT {qualified(schema, 'ensure_day_partition')}($1, $2)", table, day)
        if made:
            created.append(day)
    return created


@dataclasses.dataclass(frozen=True)
class MaintenanceResult:
    created: list[str]
    dropped: list[str]


async def run_maintenance(
    conn: Conn, schema: str, premake_days: int, retention_days: int, now: datetime | None = None
) -> MaintenanceResult:
    """One pass: premake future partitions and drop expired ones.

    Passes are serialized by an advisory lock, so replicas (and a cron job) can run
    them at the same time: the second waits, then finds nothing left to do.
    """
    today = (now or clock.now()).astimezone(UTC).date()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", MAINTENANCE_LOCK)
        created = []
        for table in DAY_PARTITIONED_TABLES:
            days = await ensure_partitions(conn, schema, table, days_to_premake(today, premake_days))
            created += [partition_name(table, day) for day in days]
        dropped = await conn.fetch(
            f"SELECT * FROM {qualified(schema, 'drop_day_partitions_before')}($1)",
            drop_cutoff(today, retention_days),
        )
    return MaintenanceResult(created, [row[0] for row in dropped])
