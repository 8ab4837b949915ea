"""One micro-batch, ONE PostgreSQL statement (so one transaction and one round
trip): history INSERT and current-state UPSERT per stream, and the rejects
INSERT. What to do when it fails (retry, bisect) is bridge/ingest/writer.py's
business; this module only talks SQL."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from datetime import date, datetime

import asyncpg
import structlog

from bridge import clock
from bridge.analytics.invalidation import batch_cte, every_vehicle_hours
from bridge.db import Conn, qualified, sqlstate
from bridge.ingest.batch import history_columns, split_by_stream
from bridge.ingest.parse import Reading, Reject, RejectReason
from bridge.schema.partitions import ensure_partitions
from bridge.streams import STREAMS, StreamSpec

__all__ = ["PgStore", "WriteOutcome", "batch_sql", "db_reject"]

log = structlog.get_logger("bridge.ingest.store")

# SQL types of the arrays: a reading's id and times (history_columns() order), a reject.
_ID_TIME_TYPES = ("text[]", "timestamptz[]", "timestamptz[]")
_REJECT_TYPES = ("timestamptz[]", "text[]", "bytea[]", "text[]", "text[]")


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


def _array_types(spec: StreamSpec) -> list[str]:
    """SQL types of the unnest() arrays, in history_columns() order."""
    return [*_ID_TIME_TYPES, *["float8[]"] * len(spec.value_fields), "int8[]"]


def _stream_ctes(schema: str, spec: StreamSpec, first: int) -> str:
    """A stream's part of the batch statement, fed ONE set of column arrays starting
    at parameter ``first``: append every reading to history (a reading already
    stored is a duplicate: DO NOTHING) and move each device's current state to its
    newest reading.

    Rows arrive sorted by (device, recorded_at) and current-state rows are taken in
    device order, so concurrent writers lock rows in the same order. Of two
    readings with the same device and time, history keeps the first; the tie-break
    on ``position`` makes the current state keep the same one.
    """
    name, columns = spec.name, _columns(spec)
    names = ", ".join(columns)
    arrays = ", ".join(f"${n}::{t}" for n, t in enumerate(_array_types(spec), start=first))
    device = spec.id_field
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    return (
        f"{name}_batch AS (SELECT * FROM unnest({arrays}) WITH ORDINALITY AS b({names}, position)), "
        f"{name}_inserted AS (INSERT INTO {qualified(schema, spec.history_table)} ({names}) "
        f"SELECT {names} FROM {name}_batch ORDER BY position ON CONFLICT DO NOTHING RETURNING 1), "
        f"{name}_newest AS (INSERT INTO {qualified(schema, spec.current_table)} AS cur ({names}) "
        f"SELECT DISTINCT ON ({device}) {names} FROM {name}_batch ORDER BY {device}, recorded_at DESC, position "
        # The WHERE keeps a late or duplicate reading from replacing a newer one.
        f"ON CONFLICT ({device}) DO UPDATE SET {updates} WHERE excluded.recorded_at > cur.recorded_at)"
    )


def batch_sql(schema: str) -> str:
    """The whole batch in ONE statement, so in one transaction and one round trip:
    every stream's history and current state, the rejects, and what the readings may
    change in the efficiency roll-up (bridge/analytics/invalidation.py). Parameters:
    each stream's column arrays in STREAMS' order, the rejects' five arrays, then
    the hours invalidated for every vehicle (or NULLs) and the time. Returns
    one row: the history rows inserted per stream, and the reasons of the rejects
    stored (a reject already stored is not stored twice).

    PostgreSQL runs a statement's data-modifying parts in an order fixed by the
    statement's text, and every writer sends the same text: so concurrent writers
    take their locks table by table in the same order, and row by row in the same
    order within a table (see _stream_ctes), and cannot deadlock.
    """
    ctes, first = [], 1
    for spec in STREAMS.values():
        ctes.append(_stream_ctes(schema, spec, first))
        first += len(_array_types(spec))
    rejects = ", ".join(f"${first + n}::{t}" for n, t in enumerate(_REJECT_TYPES))
    ctes.append(
        f"rejects_stored AS (INSERT INTO {qualified(schema, 'ingest_rejects')} "
        f"(received_at, topic, payload, reason, detail) SELECT * FROM unnest({rejects}) "
        "ON CONFLICT (topic, payload_sha256) DO NOTHING RETURNING reason)"
    )
    first += len(_REJECT_TYPES)
    ctes.append(batch_cte(schema, "vehicle_batch", "meter_batch", first, first + 1, first + 2))
    counts = ", ".join(f"(SELECT count(*) FROM {name}_inserted) AS {name}" for name in STREAMS)
    return (
        f"WITH {', '.join(ctes)} "
        f"SELECT {counts}, (SELECT coalesce(array_agg(reason), '{{}}') FROM rejects_stored) AS rejected"
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
        self._sql = batch_sql(schema)
        self._known_days: dict[str, set[date]] = collections.defaultdict(set)  # per history table

    def forget_partitions(self) -> None:
        """Check every day's partition again (one was dropped under us)."""
        self._known_days.clear()

    async def commit(self, readings: Sequence[Reading], rejects: Sequence[Reject]) -> WriteOutcome:
        """Store the readings and rejects in one statement; raises what the database raised."""
        by_stream = split_by_stream(readings)
        arrays = [column for spec in STREAMS.values() for column in history_columns(spec, by_stream[spec.name])]
        ordered = sorted(rejects, key=lambda r: (r.topic, r.payload))
        arrays += [
            [r.received_at for r in ordered],
            [_text(r.topic) for r in ordered],
            [r.payload for r in ordered],
            [r.reason for r in ordered],
            [_text(r.detail) for r in ordered],
        ]
        every_vehicle = every_vehicle_hours(by_stream) or (None, None)
        async with self._pool.acquire() as conn:
            await self._ensure_partitions(conn, by_stream)
            row = await conn.fetchrow(self._sql, *arrays, *every_vehicle, clock.now())
        assert row is not None  # a SELECT of aggregates returns one row
        outcome = WriteOutcome(committed_at=clock.now())
        for spec in STREAMS.values():
            inserted = row[spec.name]
            outcome.inserted[spec.name] = inserted
            outcome.duplicates[spec.name] = len(by_stream[spec.name]) - inserted
        outcome.rejected.update(row["rejected"])
        return outcome

    async def _ensure_partitions(self, conn: Conn, by_stream: dict[str, list[Reading]]) -> None:
        """Create any missing day partition before the batch's statement."""
        for name, rows in by_stream.items():
            table = STREAMS[name].history_table
            days = {r.recorded_at.date() for r in rows} - self._known_days[table]
            if days:
                created = await ensure_partitions(conn, self._schema, table, days)
                if created:
                    log.info("partitions_created", table=table, days=[d.isoformat() for d in created])
                self._known_days[table].update(days)
