"""The daemon's lifecycle.

:class:`Bridge` is the ingest pipeline: the intake (broker link -> batches) and
the committer (batches -> PostgreSQL -> acknowledgements) running side by side,
and a graceful drain when ``stop`` is set. It is handed its link factory and its
writer, so its loop runs in-process in tests with fakes of both.
:func:`run_daemon` wires the real ones: the database pool, the broker reader,
the HTTP port and the background chores.

While batches commit (up to ``FLEET_BRIDGE_DB_COMMITS_IN_FLIGHT`` at once, each on
its own connection) the next one fills; the hand-over queue holds one more. So
at most commits-in-flight + 2 batches' worth of messages are in the process at
once: that is the in-flight window (bridge/ingest/inflight.py), which the link
enforces by not reading the socket while it is full.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import structlog

from bridge import __version__, clock
from bridge.analytics.rollup_loop import rollup_loop
from bridge.broker_health import watch_broker
from bridge.config import Settings
from bridge.db import create_pool
from bridge.http import start_http_server
from bridge.ingest.batch import Batch
from bridge.ingest.batcher import FlushPolicy
from bridge.ingest.committer import BatchWriter, Committer
from bridge.ingest.housekeeping import maintenance_loop, stale_loop
from bridge.ingest.inflight import InflightWindow
from bridge.ingest.intake import Departure, Intake, LinkFactory, Outcome
from bridge.ingest.link import warn_if_tls_insecure
from bridge.ingest.parse import ParseRules
from bridge.ingest.presence import group_members_online
from bridge.ingest.readers import ReaderChoice, choose_reader
from bridge.ingest.store import PgStore
from bridge.ingest.writer import Writer
from bridge.metrics import Health, Metrics, build_labels

__all__ = ["Bridge", "adopt_session", "parse_rules", "run_daemon", "window_capacity"]

log = structlog.get_logger("bridge.ingest.service")

# Besides the batches committing: one queued for the committer, one filling.
BATCHES_BESIDE_COMMITS = 2


def parse_rules(settings: Settings) -> ParseRules:
    return ParseRules(
        topic_prefix=settings.mqtt.topic_prefix,
        max_payload_bytes=settings.validation.max_payload_bytes,
        max_future_skew=timedelta(seconds=settings.validation.max_future_skew_s),
        retention_days=settings.partitions.retention_days,
    )


def window_capacity(settings: Settings) -> int:
    """How many messages the process may hold (the memory bound)."""
    return (settings.db.commits_in_flight + BATCHES_BESIDE_COMMITS) * settings.batch.max_rows


class Bridge:
    """The ingest pipeline: ``await Bridge(...).run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        open_link: LinkFactory,
        writer: BatchWriter,
        metrics: Metrics,
        health: Health,
        departure: Departure | None = None,
    ) -> None:
        """``departure`` says how to leave on stop (default: keep the session)."""
        self.window = InflightWindow(window_capacity(settings))
        batches: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        self._batches = batches
        self._intake = Intake(
            departure=departure or Departure(leave_group=False, timeout_s=settings.mqtt.drain_timeout_s),
            open_link=open_link,
            window=self.window,
            policy=FlushPolicy(settings.batch.max_rows, settings.batch.max_delay_ms / 1000),
            rules=parse_rules(settings),
            batches=batches,
            metrics=metrics,
            health=health,
        )
        self._committer = Committer(writer, self.window, batches, metrics, in_flight=settings.db.commits_in_flight)

    async def run(self, stop: asyncio.Event) -> Outcome:
        """Ingest until ``stop`` is set; then leave (bridge/ingest/intake.py): what
        could not be stored in time stays unacknowledged, for the broker to keep."""
        return await self._with_committer(self._intake.run(stop))

    async def adopt(self, stop: asyncio.Event) -> Outcome:
        """Drain and end the session the link factory opens (fleet-bridge adopt-session)."""
        return await self._with_committer(self._intake.adopt(stop))

    async def _with_committer(self, intake: Coroutine[Any, Any, Outcome]) -> Outcome:
        async with asyncio.TaskGroup() as tasks:
            committer = tasks.create_task(self._committer.run())
            done = await intake
            # Drained: the committer is idle. Not: it may be retrying a batch against a
            # database that is down; that batch stays unacknowledged.
            committer.cancel()
        return done


def daemon_departure(settings: Settings) -> Departure:
    """A replica in a shared group leaves it on a graceful stop (unless told not to),
    except the last one online; a bridge on its own keeps its session."""
    mqtt = settings.mqtt
    leave = mqtt.shared_group is not None and mqtt.leave_group_on_stop
    return Departure(
        leave_group=leave,
        timeout_s=mqtt.drain_timeout_s,
        others_in_group=functools.partial(group_members_online, settings) if leave else None,
    )


def _choose_reader(settings: Settings) -> ReaderChoice:
    reader = choose_reader(settings)
    if reader.why_plain is not None:
        log.warning("mqtt_plain_reader", reason=reader.why_plain, detail="slower, public paho API only")
    return reader


async def run_daemon(settings: Settings, stop: asyncio.Event) -> None:
    """``fleet-bridge run``: the pipeline with the real database, broker reader and
    HTTP port, plus partition maintenance and the stale-device count."""
    reader = _choose_reader(settings)
    metrics, health = Metrics(build={**build_labels(), "mqtt_reader": reader.name}), Health()
    pool = await create_pool(settings)
    server = await start_http_server(settings.metrics.host, settings.metrics.port, metrics, health)
    log.info(
        "bridge_started", version=__version__, metrics_port=server.sockets[0].getsockname()[1],
        client_id=settings.mqtt.client_id, mqtt_reader=reader.name,
    )  # fmt: skip
    warn_if_tls_insecure(settings)
    if clock.offset():
        log.warning("clock_moved", variable=clock.CLOCK_ENV, now=clock.now().isoformat(), detail="for tests only")
    try:
        writer = Writer(PgStore(pool, settings.db.schema), metrics, health)
        bridge = Bridge(
            settings, open_link=reader.links(settings), writer=writer, metrics=metrics, health=health,
            departure=daemon_departure(settings),
        )  # fmt: skip
        async with asyncio.TaskGroup() as tasks:
            chores = [
                tasks.create_task(maintenance_loop(pool, settings)),
                tasks.create_task(stale_loop(pool, settings, metrics, health)),
                tasks.create_task(watch_broker(settings, metrics, lambda: health.mqtt_connected)),
                tasks.create_task(rollup_loop(settings, metrics)),
            ]
            outcome = await bridge.run(stop)
            for chore in chores:
                chore.cancel()
    finally:
        server.close()
        await pool.close()
    log.info("bridge_stopped", session=outcome.value)


async def adopt_session(settings: Settings, client_id: str, stop: asyncio.Event, metrics: Metrics) -> Outcome:
    """``fleet-bridge adopt-session``: store and acknowledge everything the session of
    ``client_id`` holds, with the daemon's guarantees, then end it (Outcome.ENDED).
    ``metrics`` counts what was stored."""
    reader = _choose_reader(settings)
    pool = await create_pool(settings)
    try:
        health = Health()
        writer = Writer(PgStore(pool, settings.db.schema), metrics, health)
        links = reader.links(settings, adopt=client_id)
        return await Bridge(settings, open_link=links, writer=writer, metrics=metrics, health=health).adopt(stop)
    finally:
        await pool.close()
