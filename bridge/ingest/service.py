"""The daemon's lifecycle.

:class:`Bridge` is the ingest pipeline: the intake (broker link -> batches) and
the committer (batches -> PostgreSQL -> acknowledgements) running side by side,
and a graceful drain when ``stop`` is set. It is handed its link factory and its
writer, so its loop runs in-process in tests with fakes of both.
:func:`run_daemon` wires the real ones: the database pool, the broker reader,
the HTTP port and the background chores.

While one batch commits the next one fills; the hand-over queue holds one batch.
So at most three batches' worth of messages are in the process at once: that is
the in-flight window (bridge/ingest/inflight.py), which the link enforces by
not reading the socket while it is full.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from bridge import clock
from bridge.config import Settings
from bridge.db import create_pool
from bridge.http import start_http_server
from bridge.ingest.batch import Batch
from bridge.ingest.batcher import FlushPolicy
from bridge.ingest.committer import BatchWriter, Committer
from bridge.ingest.housekeeping import maintenance_loop, stale_loop
from bridge.ingest.inflight import InflightWindow
from bridge.ingest.intake import Intake, LinkFactory
from bridge.ingest.parse import ParseRules
from bridge.ingest.readers import choose_reader
from bridge.ingest.store import PgStore
from bridge.ingest.writer import Writer
from bridge.metrics import Health, Metrics

__all__ = ["Bridge", "parse_rules", "run_daemon", "window_capacity"]

log = structlog.get_logger("bridge.ingest.service")

# One batch committing, one queued, one filling.
BATCHES_IN_PROCESS = 3


def parse_rules(settings: Settings) -> ParseRules:
    return ParseRules(
        topic_prefix=settings.mqtt.topic_prefix,
        max_payload_bytes=settings.validation.max_payload_bytes,
        max_future_skew=timedelta(seconds=settings.validation.max_future_skew_s),
        retention_days=settings.partitions.retention_days,
    )


def window_capacity(settings: Settings) -> int:
    return BATCHES_IN_PROCESS * settings.batch.max_rows


class Bridge:
    """The ingest pipeline: ``await Bridge(...).run(stop)`` until ``stop`` is set."""

    def __init__(
        self, settings: Settings, *, open_link: LinkFactory, writer: BatchWriter, metrics: Metrics, health: Health
    ) -> None:
        self.window = InflightWindow(window_capacity(settings))
        batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        self._batches = batches
        self._intake = Intake(
            open_link=open_link,
            window=self.window,
            policy=FlushPolicy(settings.batch.max_rows, settings.batch.max_delay_ms / 1000),
            rules=parse_rules(settings),
            batches=batches,
            metrics=metrics,
            health=health,
        )
        self._committer = Committer(writer, self.window, batches, metrics)

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest until ``stop`` is set; then stop taking messages, commit and
        acknowledge what was taken, and return."""
        async with asyncio.TaskGroup() as tasks:
            committer = tasks.create_task(self._committer.run())
            await self._intake.run(stop)
            await self._batches.join()
            committer.cancel()


async def run_daemon(settings: Settings, stop: asyncio.Event) -> None:
    """``fleet-bridge run``: the pipeline with the real database, broker reader and
    HTTP port, plus partition maintenance and the stale-device count."""
    metrics = Metrics()
    health = Health()
    reader = choose_reader(settings)
    pool = await create_pool(settings)
    server = await start_http_server(settings.metrics.host, settings.metrics.port, metrics, health)
    log.info(
        "bridge_started", metrics_port=server.sockets[0].getsockname()[1], client_id=settings.mqtt.client_id,
        mqtt_reader=reader.name,
    )  # fmt: skip
    if reader.why_plain is not None:
        log.warning("mqtt_plain_reader", reason=reader.why_plain, detail="slower, public paho API only")
    if clock.offset():
        log.warning("clock_moved", variable=clock.CLOCK_ENV, now=clock.now().isoformat(), detail="for tests only")
    try:
        writer = Writer(PgStore(pool, settings.db.schema), metrics, health)
        bridge = Bridge(settings, open_link=reader.open_link, writer=writer, metrics=metrics, health=health)
        async with asyncio.TaskGroup() as tasks:
            chores = [
                tasks.create_task(maintenance_loop(pool, settings)),
                tasks.create_task(stale_loop(pool, settings, metrics, health)),
            ]
            await bridge.run(stop)
            for chore in chores:
                chore.cancel()
    finally:
        server.close()
        await pool.close()
    log.info("bridge_stopped")
