"""Batches to PostgreSQL to acknowledgements: write each batch in one transaction,
then acknowledge its messages on the link they came from, and record what the
commit did in the metrics."""

from __future__ import annotations

import asyncio
import itertools
from typing import Protocol

import structlog

from bridge.ingest.batch import Batch
from bridge.ingest.inflight import InflightWindow
from bridge.ingest.store import WriteOutcome
from bridge.metrics import Metrics, observe_all
from bridge.streams import STREAM_NAMES

__all__ = ["BatchWriter", "Committer", "acknowledge"]

log = structlog.get_logger("bridge.ingest.committer")


class BatchWriter(Protocol):
    """Commits one batch, waiting out transient failures (bridge.ingest.writer.Writer)."""

    async def write(self, batch: Batch) -> WriteOutcome: ...


def acknowledge(batch: Batch) -> int:
    """Acknowledge the batch's messages, in arrival order, each on its own link; a
    link that has dropped since is skipped: the broker redelivers its messages on the
    next connection, where they count as duplicates. Returns how many were acked."""
    acked = 0
    for link, run in itertools.groupby(batch.deliveries, key=lambda delivery: delivery.link):
        messages = [delivery.message for delivery in run]
        if link.connected:
            link.ack(messages)
            acked += len(messages)
    return acked


class Committer:
    """Takes batches off ``batches`` and commits up to ``in_flight`` of them at once,
    each in its own transaction on its own connection; acknowledges them strictly
    in arrival order: a batch's PUBACKs wait for the COMMIT of every batch taken
    before it. Rows keep their lock order (bridge/ingest/store.py), so overlapping
    batches cannot deadlock, and the current state stays newest-wins whichever
    commits first."""

    def __init__(
        self,
        writer: BatchWriter,
        window: InflightWindow,
        batches: asyncio.Queue[Batch],
        metrics: Metrics,
        *,
        in_flight: int = 1,
    ) -> None:
        self._writer = writer
        self._window = window
        self._batches = batches
        self._metrics = metrics
        self._slots = asyncio.Semaphore(in_flight)  # batches taken and not yet acknowledged
        self._committing: asyncio.Queue[tuple[Batch, asyncio.Task[WriteOutcome]]] = asyncio.Queue()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._acknowledge_in_order())
            while True:
                await self._slots.acquire()
                batch = await self._batches.get()
                self._committing.put_nowait((batch, tasks.create_task(self._writer.write(batch))))

    async def _acknowledge_in_order(self) -> None:
        while True:
            batch, commit = await self._committing.get()
            outcome = await commit
            acked = acknowledge(batch)
            self._window.release(len(batch))
            self._slots.release()
            self._metrics.inflight.set(self._window.held)
            self._record(batch, outcome)
            log.debug(
                "batch_committed", messages=len(batch), acked=acked, inserted=sum(outcome.inserted.values()),
                duplicates=sum(outcome.duplicates.values()), rejected=sum(outcome.rejected.values()),
            )  # fmt: skip
            self._batches.task_done()

    def _record(self, batch: Batch, outcome: WriteOutcome) -> None:
        m = self._metrics
        committed = outcome.committed_at
        for stream, count in outcome.inserted.items():
            m.rows_written.labels(stream).inc(count)
        for stream, count in outcome.duplicates.items():
            m.duplicates.labels(stream).inc(count)
        for reason, count in outcome.rejected.items():
            m.rejected.labels(reason).inc(count)
        lags: dict[str, list[float]] = {stream: [] for stream in STREAM_NAMES}
        for reading in batch.readings:
            lags[reading.stream.name].append((committed - reading.recorded_at).total_seconds())
        for stream, values in lags.items():
            observe_all(m.ingest_lag.labels(stream), values)
        received = [r.received_at for r in batch.readings] + [r.received_at for r in batch.rejects]
        observe_all(m.pipeline_latency, [(committed - at).total_seconds() for at in received])
        m.batch_rows.observe(len(batch))
        m.last_commit.set(committed.timestamp())
