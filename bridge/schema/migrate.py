"""Versioned plain-SQL migrations, applied in order, each in its own transaction."""

from __future__ import annotations

import dataclasses
import re
from importlib import resources

import asyncpg

from bridge.db import qualified

__all__ = ["Migration", "apply_migrations", "available_migrations"]

MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
MIGRATION_LOCK = "fleet_bridge.migrate"


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped in ``bridge/schema/migrations``, by version."""
    found = []
    for entry in resources.files("bridge.schema.migrations").iterdir():
        match = MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


async def apply_migrations(conn: asyncpg.Connection, schema: str) -> list[Migration]:
    """Apply the pending migrations; returns those applied (none on a second run)."""
    applied = []
    async with conn.transaction():
        # Serialize concurrent `migrate` runs (e.g. a Job and a developer).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", MIGRATION_LOCK)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {qualified(schema, 'schema_migrations')} ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {qualified(schema, 'schema_migrations')}")}
        # The migration files use unqualified names: they land in the target schema.
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        for migration in available_migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {qualified(schema, 'schema_migrations')} (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration)
    return applied
