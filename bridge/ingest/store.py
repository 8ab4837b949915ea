"""One micro-batch, ONE PostgreSQL transaction: history INSERT and current-state
UPSERT per stream, then the rejects INSERT. What to do when it fails (retry,
bisect) is bridge/ingest/writer.py's business; this module only talks SQL."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from datetime import date, datetime

import asyncpg
import structlog

from bridge import clock
from bridge.db import Conn, qualified, sqlstate
from bridge.ingest.batch import history_columns, split_by_stream
from bridge.ingest.parse import Reading, Reject, RejectReason
from bridge.schema.partitions import ensure_partitions
from bridge.streams import STREAMS, StreamSpec

__all__ = ["PgStore", "WriteOutcome", "db_reject", "rejects_sql", "stream_sql"]

log = structlog.get_logger("bridge.ingest.store")

# SQL types of the unnest() arrays, in history_columns() order.
_ID_TIME_TYPES = ("text[]", "timestamptz[]", "timestamptz[]")


@dataclasses.dataclass
class WriteOutcome:
    """What one committed batch changed."""

    inserted: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    duplicates: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    rejected: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    committed_at: datetime = dataclasses.field(default_factory=clock.now)

    def merge(self, other: WriteOutcome) -> None:
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.committed_at = max(self.committed_at, other.committed_at)


def _columns(spec: StreamSpec) -> list[str]:
    return [spec.id_field, "recorded_at", "received_at", *spec.value_fields, "seq"]


def _unnest(spec: StreamSpec) -> str:
    types = [*_ID_TIME_TYPES, *["float8[]"] * len(spec.value_fields), "int8[]"]
    return ", ".join(f"${n}::{t}" for n, t in enumerate(types, start=1))


def stream_sql(schema: str, spec: StreamSpec) -> str:
    """One statement per stream and batch, fed ONE set of column arrays: append
    every reading to history (a reading already stored is a duplicate: DO NOTHING)
    and move each device's current state to its newest reading.

    Rows arrive sorted by (device, recorded_at) and current-state rows are taken in
    device order, so concurrent writers lock rows in the same order. Of two
    readings with the same device and time, history keeps the first; the tie-break
    on ``position`` makes the current state keep the same one. Returns the number
    of history rows inserted.
    """
    columns = _columns(spec)
    names = ", ".join(columns)
    device = spec.id_field
    history = qualified(schema, spec.history_table)
    current = qualified(schema, spec.current_table)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    return (
        f"WITH batch AS (SELECT * FROM unnest({_unnest(spec)}) WITH ORDINALITY AS b({names}, position)), "
        f"inserted AS (INSERT INTO {history} ({names}) SELECT {names} FROM batch ORDER BY position "
        "ON CONFLICT DO NOTHING RETURNING 1), "
        f"newest AS (INSERT INTO {current} AS cur ({names}) SELECT DISTINCT ON ({device}) {names} FROM batch "
        f"ORDER BY {device}, recorded_at DESC, position "
        # The WHERE keeps a late or duplicate reading from replacing a newer one.
        f"ON CONFLICT ({device}) DO UPDATE SET {updates} WHERE excluded.recorded_at > cur.recorded_at) "
        "SELECT count(*) FROM inserted"
    )


def rejects_sql(schema: str) -> str:
    return (
        f"INSERT INTO {qualified(schema, 'ingest_rejects')} (received_at, topic, payload, reason, detail) "
        "SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::bytea[], $4::text[], $5::text[]) "
        "ON CONFLICT (topic, payload_sha256) DO NOTHING RETURNING reason"
    )


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL; keep it visible instead."""
    return value.replace("\x00", "\\x00")


def db_reject(reading: Reading, exc: BaseException) -> Reject:
    detail = f"SQLSTATE {sqlstate(exc)}: {exc}"
    return Reject(RejectReason.DB_ERROR, detail, reading.topic, reading.payload, reading.received_at)


class PgStore:
    """Commits batches to the schema's tables through a connection pool."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema
        self._stream_sql = {spec.name: stream_sql(schema, spec) for spec in STREAMS.values()}
        self._rejects_sql = rejects_sql(schema)
        self._known_days: dict[str, set[date]] = collections.defaultdict(set)  # per history table

    def forget_partitions(self) -> None:
        """Check every day's partition again (one was dropped under us)."""
        self._known_days.clear()

    async def commit(self, readings: Sequence[Reading], rejects: Sequence[Reject]) -> WriteOutcome:
        """Store the readings and rejects in one transaction; raises what the database raised."""
        outcome = WriteOutcome()
        by_stream = split_by_stream(readings)
        async with self._pool.acquire() as conn:
            await self._ensure_partitions(conn, by_stream)
            async with conn.transaction():
                # One fixed table order for every writer (STREAMS' order).
                for spec in STREAMS.values():
                    rows = by_stream[spec.name]
                    if rows:
                        inserted = await conn.fetchval(self._stream_sql[spec.name], *history_columns(spec, rows))
                        outcome.inserted[spec.name] = inserted
                        outcome.duplicates[spec.name] = len(rows) - inserted
                if rejects:
                    ordered = sorted(rejects, key=lambda r: (r.topic, r.payload))
                    stored = await conn.fetch(
                        self._rejects_sql,
                        [r.received_at for r in ordered],
                        [_text(r.topic) for r in ordered],
                        [r.payload for r in ordered],
                        [r.reason for r in ordered],
                        [_text(r.detail) for r in ordered],
                    )
                    outcome.rejected.update(row["reason"] for row in stored)
        outcome.committed_at = clock.now()
        return outcome

    async def _ensure_partitions(self, conn: Conn, by_stream: dict[str, list[Reading]]) -> None:
        """Create any missing day partition before the batch's transaction."""
        for name, rows in by_stream.items():
            table = STREAMS[name].history_table
            days = {r.recorded_at.date() for r in rows} - self._known_days[table]
            if days:
                created = await ensure_partitions(conn, self._schema, table, days)
                if created:
                    log.info("partitions_created", table=table, days=[d.isoformat() for d in created])
                self._known_days[table].update(days)
