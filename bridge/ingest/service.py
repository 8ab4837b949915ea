"""The daemon's lifecycle: intake (MQTT -> batches), committer (batches ->
PostgreSQL -> acknowledgements), background maintenance, and a graceful drain.

Intake and committer overlap: while one batch commits the next one fills. The
hand-over queue holds one batch, so at most three batches' worth of messages
are in the process at once; the MQTT read gate enforces the same cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import operator
import time
from datetime import timedelta

import aiomqtt
import asyncpg
import structlog

from bridge import __version__, clock
from bridge.broker_health import watch_broker
from bridge.config import Settings
from bridge.db import create_pool, qualified
from bridge.http import start_http_server
from bridge.ingest.batch import Batch
from bridge.ingest.batcher import FlushPolicy
from bridge.ingest.mqtt import BrokerConnection, Publish
from bridge.ingest.parse import ParseRules, Reading, parse_message
from bridge.ingest.sequence import SequenceTracker
from bridge.ingest.writer import WriteOutcome, Writer
from bridge.metrics import Health, Metrics, observe_all
from bridge.retry import backoff_delay
from bridge.schema.partitions import run_maintenance

__all__ = ["Bridge"]

log = structlog.get_logger("bridge.ingest.service")

MQTT_RECEIVE_MAXIMUM_LIMIT = 65535


def parse_rules(settings: Settings) -> ParseRules:
    return ParseRules(
        topic_prefix=settings.mqtt.topic_prefix,
        max_payload_bytes=settings.validation.max_payload_bytes,
        max_future_skew=timedelta(seconds=settings.validation.max_future_skew_s),
        retention_days=settings.partitions.retention_days,
    )


def stream_of(topic: str, prefix: str) -> str:
    """Stream label for metrics; anything unexpected is 'unknown' (bounded cardinality)."""
    stream = topic[len(prefix) :].split("/", 1)[0] if topic.startswith(prefix) else ""
    return stream if stream in ("meter", "vehicle") else "unknown"


class Bridge:
    """One bridge process: ``await Bridge(settings).run(stop)`` until ``stop`` is set."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.health = Health()
        self.policy = FlushPolicy(settings.batch.max_rows, settings.batch.max_delay_ms / 1000)
        self.rules = parse_rules(settings)
        # One batch committing, one queued, one filling: that is the memory cap.
        self.max_held = min(MQTT_RECEIVE_MAXIMUM_LIMIT, 3 * settings.batch.max_rows)
        self.held = 0  # taken from the MQTT client, not yet acknowledged or dropped
        self.http_port: int | None = None
        self._batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        self._sequences = SequenceTracker()
        self._connect_count = 0
        self._connection: BrokerConnection | None = None  # the live one, if any

    async def run(self, stop: asyncio.Event) -> None:
        pool = await create_pool(self.settings)
        server = await start_http_server(
            self.settings.metrics.host, self.settings.metrics.port, self.metrics, self.health
        )
        self.http_port = server.sockets[0].getsockname()[1]
        log.info(
            "bridge_started", version=__version__, metrics_port=self.http_port, client_id=self.settings.mqtt.client_id
        )
        if clock.offset():
            log.warning("clock_moved", variable=clock.CLOCK_ENV, now=clock.now().isoformat(), detail="for tests only")
        try:
            writer = Writer(pool, self.settings.db.schema, self.metrics, self.health)
            async with asyncio.TaskGroup() as tasks:
                committer = tasks.create_task(self._commit_loop(writer))
                background = [
                    tasks.create_task(self._maintenance_loop(pool)),
                    tasks.create_task(self._stale_loop(pool)),
                    tasks.create_task(watch_broker(self.settings, self.metrics, lambda: self.health.mqtt_connected)),
                ]
                await self._intake_loop(stop)
                await self._batches.join()
                committer.cancel()
                for task in background:
                    task.cancel()
        finally:
            server.close()
            await pool.close()
        log.info("bridge_stopped")

    # --- intake -------------------------------------------------------------------

    async def _intake_loop(self, stop: asyncio.Event) -> None:
        """Connect, consume, reconnect with backoff, until asked to stop."""
        attempt = 0
        while not stop.is_set():
            connection = BrokerConnection(
                self.settings,
                receive_maximum=self.max_held,
                held=lambda: self.held,
                max_held=self.max_held,
            )
            try:
                async with connection:
                    self._connection = connection
                    self._on_connected(attempt)
                    attempt = 0
                    await self._consume(connection, stop)
                    # Stopping: acknowledge everything taken before saying goodbye.
                    await self._batches.join()
            except aiomqtt.MqttError as exc:
                attempt += 1
                delay = backoff_delay(attempt)
                log.warning("mqtt_disconnected", error=str(exc), attempt=attempt, retry_in_s=round(delay, 2))
                self.health.mqtt_connected = False
                self.metrics.mqtt_connected.set(0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        self.health.mqtt_connected = False
        self.metrics.mqtt_connected.set(0)

    def _on_connected(self, attempts: int) -> None:
        if self._connect_count:
            self.metrics.mqtt_reconnects.inc()
        self._connect_count += 1
        self.health.mqtt_connected = True
        self.metrics.mqtt_connected.set(1)
        log.info("mqtt_connected", host=self.settings.mqtt.host, port=self.settings.mqtt.port, after_attempts=attempts)

    async def _consume(self, connection: BrokerConnection, stop: asyncio.Event) -> None:
        """Turn messages into batches until the connection drops or ``stop`` is set.

        An empty batch waits for its first message. An open one does not wake up
        per message: it sleeps for the idle gap, then takes all that arrived
        meanwhile at once, and flushes when full, when due, or when a gap brought
        nothing (the broker has nothing more for now). At the fleet's steady rate
        that is a handful of wake-ups per batch instead of one per reading.
        """
        stopping = asyncio.ensure_future(stop.wait())
        batch = Batch()
        try:
            while True:
                if not batch:
                    receiving = asyncio.ensure_future(connection.receive())
                    await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not receiving.done():
                        receiving.cancel()  # loses nothing: the message stays queued
                        return  # stopping
                    self._take(connection, receiving.result(), batch)  # MqttError: connection lost
                    self._take_queued(connection, batch)
                    continue
                budget = self.policy.wait_budget(len(batch), time.monotonic() - batch.opened_at)
                if budget:
                    await asyncio.wait({stopping}, timeout=budget)
                    if stopping.done():
                        return
                    if self._take_queued(connection, batch) and not self.policy.is_full(len(batch)):
                        continue
                batch = await self._flush(batch)
        finally:
            stopping.cancel()
            if batch:
                await self._flush(batch)

    def _take_queued(self, connection: BrokerConnection, batch: Batch) -> int:
        """Take what the client has already received, up to a full batch; how many."""
        taken = 0
        while not self.policy.is_full(len(batch)) and (queued := connection.take_nowait()) is not None:
            self._take(connection, queued, batch)
            taken += 1
        self.metrics.inflight.set(self.held)
        return taken

    def _take(self, connection: BrokerConnection, message: Publish, batch: Batch) -> None:
        topic = message.topic
        result = parse_message(topic, message.payload, clock.now(), self.rules)
        if not batch:
            batch.opened_at = time.monotonic()
        batch.handles.append((connection, message))
        stream: str
        if isinstance(result, Reading):
            batch.readings.append(result)
            stream = result.stream.name
            if self._sequences.observe(stream, result.device_id, result.seq):
                self.metrics.sequence_gaps.labels(stream).inc()
        else:
            batch.rejects.append(result)
            stream = stream_of(topic, self.rules.topic_prefix)
        batch.received[stream] += 1
        self.held += 1

    async def _flush(self, batch: Batch) -> Batch:
        """Hand the batch to the committer (waits while it is busy: back-pressure)."""
        if batch:
            for stream, count in batch.received.items():
                self.metrics.messages_received.labels(stream).inc(count)
            await self._batches.put(batch)
        return Batch()

    # --- commit -------------------------------------------------------------------

    async def _commit_loop(self, writer: Writer) -> None:
        while True:
            batch = await self._batches.get()
            outcome = await writer.write(batch)
            acked = 0
            for connection, run in itertools.groupby(batch.handles, key=operator.itemgetter(0)):
                # A message of a connection that has since dropped is redelivered by
                # the broker on the next one; it is stored already, so it will count
                # as a duplicate there. Never ack it on another connection.
                messages = [message for _, message in run]
                if connection.connected:
                    connection.ack(messages)
                    acked += len(messages)
            self.held -= len(batch)
            self.metrics.inflight.set(self.held)
            self._record(batch, outcome)
            log.debug(
                "batch_committed", messages=len(batch), acked=acked, inserted=sum(outcome.inserted.values()),
                duplicates=sum(outcome.duplicates.values()), rejected=sum(outcome.rejected.values()),
            )  # fmt: skip
            if self._connection is not None:
                self._connection.resume_if_drained()
            self._batches.task_done()

    def _record(self, batch: Batch, outcome: WriteOutcome) -> None:
        m = self.metrics
        committed = outcome.committed_at
        for stream, count in outcome.inserted.items():
            m.rows_written.labels(stream).inc(count)
        for stream, count in outcome.duplicates.items():
            m.duplicates.labels(stream).inc(count)
        for reason, count in outcome.rejected.items():
            m.rejected.labels(reason).inc(count)
        lags: dict[str, list[float]] = {"meter": [], "vehicle": []}
        for reading in batch.readings:
            lags[reading.stream.name].append((committed - reading.recorded_at).total_seconds())
        for stream, values in lags.items():
            observe_all(m.ingest_lag.labels(stream), values)
        received = [r.received_at for r in batch.readings] + [r.received_at for r in batch.rejects]
        observe_all(m.pipeline_latency, [(committed - at).total_seconds() for at in received])
        m.batch_rows.observe(len(batch))
        m.last_commit.set(committed.timestamp())

    # --- background ---------------------------------------------------------------

    async def _maintenance_loop(self, pool: asyncpg.Pool) -> None:
        parts = self.settings.partitions
        while True:
            try:
                async with pool.acquire() as conn:
                    result = await run_maintenance(
                        conn, self.settings.db.schema, parts.premake_days, parts.retention_days
                    )
                if result.created or result.dropped:
                    log.info("partitions_maintained", created=result.created, dropped=result.dropped)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("maintenance_failed", error=str(exc)[:300])
            await asyncio.sleep(parts.maintenance_interval_s)

    async def _stale_loop(self, pool: asyncpg.Pool) -> None:
        """Count stale devices, and keep /readyz honest about the database when idle."""
        schema = self.settings.db.schema
        stale_after = timedelta(seconds=self.settings.metrics.stale_after_s)
        while True:
            try:
                async with pool.acquire() as conn:
                    cutoff = clock.now() - stale_after
                    for stream in ("meter", "vehicle"):
                        stale = await conn.fetchval(
                            f"SELECT count(*) FROM {qualified(schema, stream + '_current_state')}"
                            " WHERE recorded_at < $1",
                            cutoff,
                        )
                        self.metrics.devices_stale.labels(stream).set(stale)
                self.health.db_ok = True
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                self.health.db_ok = False
                log.warning("db_check_failed", error=str(exc)[:300])
            await asyncio.sleep(self.settings.metrics.stale_check_interval_s)
