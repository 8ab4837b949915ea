"""MQTT to batches: keep a broker link up (reconnecting with backoff), take what
it received, parse each message, and hand batches to the committer when the
flush policy closes them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from bridge import clock
from bridge.ingest.batch import Batch
from bridge.ingest.batcher import FlushPolicy
from bridge.ingest.inflight import InflightWindow
from bridge.ingest.link import BrokerLink, Delivery, LinkError, Publish
from bridge.ingest.parse import ParseRules, Reading, parse_message
from bridge.ingest.sequence import SequenceTracker
from bridge.metrics import Health, Metrics
from bridge.retry import backoff_delay
from bridge.streams import STREAMS

__all__ = ["Intake", "LinkFactory", "stream_of"]

log = structlog.get_logger("bridge.ingest.intake")

# Opens a fresh link for each connection, counting its messages in the window.
LinkFactory = Callable[[InflightWindow], BrokerLink]


def stream_of(topic: str, prefix: str) -> str:
    """Stream label for metrics; anything unexpected is 'unknown' (bounded cardinality)."""
    stream = topic[len(prefix) :].split("/", 1)[0] if topic.startswith(prefix) else ""
    return stream if stream in STREAMS else "unknown"


class Intake:
    """Turns a broker link's messages into batches on ``batches``."""

    def __init__(
        self,
        *,
        open_link: LinkFactory,
        window: InflightWindow,
        policy: FlushPolicy,
        rules: ParseRules,
        batches: asyncio.Queue[Batch],
        metrics: Metrics,
        health: Health,
    ) -> None:
        self._open_link = open_link
        self._window = window
        self._policy = policy
        self._rules = rules
        self._batches = batches
        self._metrics = metrics
        self._health = health
        self._sequences = SequenceTracker()
        self._connections = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, consume, reconnect with backoff, until ``stop`` is set; then flush
        and wait until everything taken is acknowledged before disconnecting."""
        attempt = 0
        while not stop.is_set():
            try:
                async with self._open_link(self._window) as link:
                    self._on_connected(link, attempt)
                    attempt = 0
                    await self._consume(link, stop)
                    # Stopping: acknowledge everything taken before saying goodbye.
                    await self._batches.join()
            except LinkError as exc:
                attempt += 1
                delay = backoff_delay(attempt)
                log.warning("mqtt_disconnected", error=str(exc), attempt=attempt, retry_in_s=round(delay, 2))
                self._set_connected(False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        self._set_connected(False)

    def _on_connected(self, link: BrokerLink, attempts: int) -> None:
        if self._connections:
            self._metrics.mqtt_reconnects.inc()
        self._connections += 1
        self._set_connected(True)
        log.info("mqtt_connected", broker=link.address, after_attempts=attempts)

    def _set_connected(self, up: bool) -> None:
        self._health.mqtt_connected = up
        self._metrics.mqtt_connected.set(1 if up else 0)

    async def _consume(self, link: BrokerLink, stop: asyncio.Event) -> None:
        """Turn messages into batches until the link drops or ``stop`` is set.

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
                    receiving = asyncio.ensure_future(link.receive())
                    await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    if not receiving.done():
                        receiving.cancel()  # loses nothing: the message stays queued
                        return  # stopping
                    self._take(link, receiving.result(), batch)  # LinkError: connection lost
                    self._take_queued(link, batch)
                    continue
                budget = self._policy.wait_budget(len(batch), time.monotonic() - batch.opened_at)
                if budget:
                    await asyncio.wait({stopping}, timeout=budget)
                    if stopping.done():
                        return
                    if self._take_queued(link, batch) and not self._policy.is_full(len(batch)):
                        continue
                batch = await self._flush(batch)
        finally:
            stopping.cancel()
            if batch:
                await self._flush(batch)

    def _take_queued(self, link: BrokerLink, batch: Batch) -> int:
        """Take what the link has already received, up to a full batch; how many."""
        taken = 0
        while not self._policy.is_full(len(batch)) and (queued := link.take_nowait()) is not None:
            self._take(link, queued, batch)
            taken += 1
        self._metrics.inflight.set(self._window.held)
        return taken

    def _take(self, link: BrokerLink, message: Publish, batch: Batch) -> None:
        topic = message.topic
        result = parse_message(topic, message.payload, clock.now(), self._rules)
        if not batch:
            batch.opened_at = time.monotonic()
        batch.deliveries.append(Delivery(link, message))
        stream: str
        if isinstance(result, Reading):
            batch.readings.append(result)
            stream = result.stream.name
            if self._sequences.observe(stream, result.device_id, result.seq):
                self._metrics.sequence_gaps.labels(stream).inc()
        else:
            batch.rejects.append(result)
            stream = stream_of(topic, self._rules.topic_prefix)
        batch.received[stream] += 1

    async def _flush(self, batch: Batch) -> Batch:
        """Hand the batch to the committer (waits while it is busy: back-pressure)."""
        if batch:
            for stream, count in batch.received.items():
                self._metrics.messages_received.labels(stream).inc(count)
            await self._batches.put(batch)
        return Batch()
