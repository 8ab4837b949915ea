"""What to do with a batch the database will not take at once.

Transient errors (the database away, restarting, too slow, a partition dropped
under us) are waited out: the same batch is tried again with backoff, and stays
unacknowledged meanwhile. Permanent ones (a row the database refuses: SQLSTATE
classes 22 and 23) are isolated by bisecting the batch, so the good readings are
stored and each bad one becomes a ``db_error`` reject. The SQL itself is a
:class:`Store`'s (bridge/ingest/store.py), so this policy is tested without a
database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Protocol

import asyncpg
import structlog

from bridge.db import TRANSIENT_ERRORS, ErrorKind, classify, is_missing_partition, sqlstate
from bridge.ingest.batch import Batch
from bridge.ingest.parse import Reading, Reject
from bridge.ingest.store import WriteOutcome, db_reject
from bridge.metrics import Health, Metrics
from bridge.retry import backoff_delay

__all__ = ["Store", "Writer"]

log = structlog.get_logger("bridge.ingest.writer")


class Store(Protocol):
    """Commits readings and rejects in one transaction (bridge.ingest.store.PgStore)."""

    async def commit(self, readings: Sequence[Reading], rejects: Sequence[Reject]) -> WriteOutcome: ...

    def forget_partitions(self) -> None: ...


class Writer:
    """Writes batches through a store; one instance per daemon."""

    def __init__(self, store: Store, metrics: Metrics, health: Health) -> None:
        self._store = store
        self._metrics = metrics
        self._health = health

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
            except TRANSIENT_ERRORS as exc:
                attempt += 1
                self._health.db_ok = False
                self._metrics.db_errors.labels("transient").inc()
                if is_missing_partition(exc):
                    self._store.forget_partitions()
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
            return await self._store.commit(readings, rejects)
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
