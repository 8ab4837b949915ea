"""Writes one micro-batch in ONE transaction: history INSERT, current-state UPSERT,
rejects INSERT. Transient database errors are retried with the batch kept;
permanent ones (bad data) are isolated by bisecting the batch."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Sequence
from datetime import date, datetime

import asyncpg
import structlog

from bridge import clock
from bridge.db import NO_PARTITION_MESSAGE, Conn, ErrorKind, classify, qualified, sqlstate
from bridge.ingest.batch import Batch, history_columns, split_by_stream
from bridge.ingest.parse import METER, STREAMS, VEHICLE, Reading, Reject, RejectReason, StreamSpec
from bridge.metrics import Health, Metrics
from bridge.retry import backoff_delay
from bridge.schema.partitions import ensure_partitions

__all__ = ["WriteOutcome", "Writer"]

log = structlog.get_logger("bridge.ingest.writer")

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
    history = qualified(schema, spec.name + "_telemetry_history")
    current = qualified(schema, spec.name + "_current_state")
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


class Writer:
    """Writes batches to PostgreSQL; one instance per daemon."""

    def __init__(self, pool: asyncpg.Pool, schema: str, metrics: Metrics, health: Health) -> None:
        self._pool = pool
        self._metrics = metrics
        self._health = health
        self._stream_sql = {spec.name: stream_sql(schema, spec) for spec in STREAMS.values()}
        self._rejects_sql = rejects_sql(schema)
        self._schema = schema
        self._known_days: dict[str, set[date]] = collections.defaultdict(set)  # per history table

    async def write(self, batch: Batch) -> WriteOutcome:
        """Commit the batch, retrying transient failures until it succeeds.

        Cancelling this (forced shutdown) leaves the batch unacknowledged: the broker
        redelivers it to the next session.
        """
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                outcome = await self._write_isolating(batch.readings, batch.rejects)
            except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                attempt += 1
                self._health.db_ok = False
                self._metrics.db_errors.labels("transient").inc()
                if NO_PARTITION_MESSAGE in str(exc):
                    self._known_days.clear()
                delay = backoff_delay(attempt)
                log.warning(
                    "db_write_retry", error=type(exc).__name__, sqlstate=sqlstate(exc), detail=str(exc)[:300],
                    attempt=attempt, retry_in_s=round(delay, 2), batch=len(batch),
                )  # fmt: skip
                await asyncio.sleep(delay)
                continue
            if not self._health.db_ok:
                log.info("db_ok", recovered_after_attempts=attempt)
            self._health.db_ok = True
            self._metrics.batch_commit.observe(time.perf_counter() - started)
            return outcome

    async def _write_isolating(self, readings: Sequence[Reading], rejects: Sequence[Reject]) -> WriteOutcome:
        """Write; on a permanent (data) error, bisect until the bad readings are found.

        The bad ones become ``db_error`` rejects carrying the SQLSTATE; the rest are
        stored. Transient errors propagate to the retry loop.
        """
        try:
            return await self._transaction(readings, rejects)
        except asyncpg.PostgresError as exc:
            if classify(exc) is not ErrorKind.PERMANENT:
                raise
            self._metrics.db_errors.labels("permanent").inc()
            if len(readings) > 1:
                half = len(readings) // 2
                log.info("db_bisect", sqlstate=sqlstate(exc), rows=len(readings))
                outcome = await self._write_isolating(readings[:half], rejects)
                outcome.merge(await self._write_isolating(readings[half:], ()))
                return outcome
            if readings:
                log.warning("db_reject", sqlstate=sqlstate(exc), detail=str(exc)[:300], topic=readings[0].topic)
                return await self._write_isolating((), [*rejects, db_reject(readings[0], exc)])
            # Only rejects left and still refused: nothing sane remains to try. Say so
            # loudly rather than stall the stream forever behind them.
            log.error("rejects_unstorable", sqlstate=sqlstate(exc), detail=str(exc)[:300], count=len(rejects))
            return WriteOutcome()

    async def _transaction(self, readings: Sequence[Reading], rejects: Sequence[Reject]) -> WriteOutcome:
        outcome = WriteOutcome()
        by_stream = split_by_stream(readings)
        async with self._pool.acquire() as conn:
            await self._ensure_partitions(conn, by_stream)
            async with conn.transaction():
                # One fixed table order for every writer: meter, then vehicle.
                for spec in (METER, VEHICLE):
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
            table = name + "_telemetry_history"
            days = {r.recorded_at.date() for r in rows} - self._known_days[table]
            if days:
                created = await ensure_partitions(conn, self._schema, table, days)
                if created:
                    log.info("partitions_created", table=table, days=[d.isoformat() for d in created])
                self._known_days[table].update(days)
