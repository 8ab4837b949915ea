"""MQTT to batches: keep a broker link up (reconnecting with backoff), take what
it received, parse each message, and hand batches to the committer when the
flush policy closes them; and, told to stop, leave without stranding anything.

Leaving: the open batch is committed and everything taken is acknowledged before
the link closes. A replica in a shared group first leaves the group: it
unsubscribes (the broker assigns it nothing more and keeps what the session
already holds), queues a marker behind what the session holds, stores and
acknowledges everything up to the marker, and then ends the session, so nothing
can strand in it. Whatever cannot be done before the deadline (the database is
down, the backlog is huge) stays unacknowledged, in a session that is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
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

__all__ = ["Departure", "Intake", "LinkFactory", "Outcome", "stream_of"]

log = structlog.get_logger("bridge.ingest.intake")

# Opens a fresh link for each connection, counting its messages in the window.
LinkFactory = Callable[[InflightWindow], BrokerLink]


@dataclasses.dataclass(frozen=True)
class Departure:
    """How the intake leaves when told to stop."""

    leave_group: bool  # leave the shared group and end the session once it is empty
    timeout_s: float  # how long storing and acknowledging what is held may take
    # How many other members of the group are online (bridge/ingest/presence.py): the
    # last one stays subscribed, so that the broker keeps queueing the group's readings.
    others_in_group: Callable[[], Awaitable[int]] | None = None


class Outcome(enum.Enum):
    """How the intake left its session."""

    ENDED = "ended"  # everything stored and acknowledged, the session ended
    KEPT = "kept"  # everything taken stored and acknowledged, the session kept
    UNSETTLED = "unsettled"  # the deadline passed: what was not stored stays unacknowledged


@dataclasses.dataclass
class _Marker:
    """The drain marker of a departure: its topic and token, and whether it came back."""

    topic: str
    token: bytes
    seen: asyncio.Future[None]


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
        departure: Departure,
    ) -> None:
        self._open_link = open_link
        self._window = window
        self._policy = policy
        self._rules = rules
        self._batches = batches
        self._metrics = metrics
        self._health = health
        self._departure = departure
        self._sequences = SequenceTracker()
        self._connections = 0
        self._marker: _Marker | None = None

    async def run(self, stop: asyncio.Event) -> Outcome:
        """Connect, consume, reconnect with backoff, until ``stop`` is set; then leave
        (see the module's docstring)."""
        attempt = 0
        while not stop.is_set():
            try:
                async with self._open_link(self._window) as link:
                    self._on_connected(link, attempt)
                    attempt = 0
                    stopping = asyncio.ensure_future(stop.wait())
                    try:
                        batch = await self._consume(link, stopping, Batch())
                    finally:
                        stopping.cancel()
                    return await self._depart(link, batch, leave_group=self._departure.leave_group)
            except LinkError as exc:
                attempt += 1
                delay = backoff_delay(attempt)
                log.warning("mqtt_disconnected", error=str(exc), attempt=attempt, retry_in_s=round(delay, 2))
                self._set_connected(False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        self._set_connected(False)
        return Outcome.KEPT if await self._settle(Batch(), self._deadline()) else Outcome.UNSETTLED

    async def adopt(self, stop: asyncio.Event) -> Outcome:
        """Drain and end the session the link factory opens (a replica that will not
        come back): store and acknowledge everything it holds, then end it."""
        try:
            async with self._open_link(self._window) as link:
                self._on_connected(link, 0)
                if not link.session_present:
                    log.info("adopt_no_session", detail="the broker had no session for this client id")
                return await self._depart(link, Batch(), leave_group=True, stop=stop)
        except LinkError as exc:
            log.warning("adopt_failed", error=str(exc))
            return Outcome.UNSETTLED
        finally:
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

    # --- leaving ------------------------------------------------------------------

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._departure.timeout_s

    async def _depart(
        self, link: BrokerLink, batch: Batch, *, leave_group: bool, stop: asyncio.Event | None = None
    ) -> Outcome:
        deadline = self._deadline()
        left = False
        if leave_group:
            try:
                batch, left = await self._drain_session(link, batch, deadline, stop)
            except (LinkError, TimeoutError) as exc:
                log.warning("leave_incomplete", broker=link.address, error=str(exc) or "deadline passed")
        if not await self._settle(batch, deadline):
            log.warning(
                "stopped_with_messages_unacknowledged", messages=self._window.held,
                detail="they stay in the session, for this client id's next connection or adopt-session",
            )  # fmt: skip
            return Outcome.UNSETTLED
        if left:
            await link.close(end_session=True)
            log.info("session_ended", broker=link.address)
            return Outcome.ENDED
        return Outcome.KEPT

    async def _drain_session(
        self, link: BrokerLink, batch: Batch, deadline: float, stop: asyncio.Event | None
    ) -> tuple[Batch, bool]:
        """Leave the group and take everything up to the session's drain marker; the
        open batch, and whether the group was left (the last member stays). Messages
        keep being taken meanwhile: the broker's answers queue behind what the
        session holds."""
        loop = asyncio.get_running_loop()
        token = uuid.uuid4().hex
        self._marker = marker = _Marker(link.marker_topic, token.encode(), loop.create_future())
        until = asyncio.ensure_future(self._leave(link, token, deadline, stop))
        batch = await self._consume(link, until, batch)
        left: bool = until.result()  # LinkError, TimeoutError: the departure is incomplete
        if left and not marker.seen.done():
            raise TimeoutError("stopped before the session was empty")
        return batch, left

    async def _leave(self, link: BrokerLink, token: str, deadline: float, stop: asyncio.Event | None) -> bool:
        """Say "leaving", and unless no other member of the group is online,
        unsubscribe, queue the marker and wait for it (or for ``stop``)."""
        assert self._marker is not None
        async with asyncio.timeout_at(deadline):
            if self._departure.others_in_group is not None and not await self._others_remain(link):
                return False
            log.info("leaving_group", broker=link.address, held=self._window.held)
            unsubscribed_nothing = await link.leave(token)
            if unsubscribed_nothing and link.session_present:
                # Other filters may still feed this session; ending it could drop what
                # they bring after the marker. Keep it, and say why.
                raise LinkError(
                    f"the session had no subscription to {', '.join(unsubscribed_nothing)}: are the topic "
                    "prefix and shared group those of the replica that used this client id?"
                )
            ends: set[asyncio.Future[Any]] = {self._marker.seen}
            if stop is not None:
                ends.add(asyncio.ensure_future(stop.wait()))
            try:
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for end in ends - {self._marker.seen}:
                    end.cancel()
        return True

    async def _others_remain(self, link: BrokerLink) -> bool:
        """Whether another member of the group stays subscribed. This replica says
        "leaving" first, then looks: of members stopping at the same time, the last
        to say so sees all the others leaving and stays, so the group never ends up
        without a subscriber (the broker would drop its readings)."""
        assert self._departure.others_in_group is not None
        try:
            await link.announce_leaving()
            others = await self._departure.others_in_group()
        except (LinkError, OSError, aiomqtt.MqttError) as exc:
            log.warning("group_presence_unknown", error=str(exc))
            others = 0  # unknown: keep the session, the safe side
        if not others:
            log.warning(
                "last_in_group_keeps_session",
                detail="no other member of the group is online: staying subscribed, so the broker queues its readings",
            )  # fmt: skip
        return others > 0

    async def _settle(self, batch: Batch, deadline: float) -> bool:
        """Commit the open batch and wait until everything taken is acknowledged, up
        to the deadline; a batch that could not even be queued is let go (it stays
        unacknowledged, so the broker keeps it)."""
        queued = False
        try:
            async with asyncio.timeout_at(deadline):
                await self._flush(batch)
                queued = True
                await self._batches.join()
        except TimeoutError:
            if not queued:
                self._window.release(len(batch))
            return False
        return True

    # --- taking messages ----------------------------------------------------------

    async def _consume(self, link: BrokerLink, until: asyncio.Future[Any], batch: Batch) -> Batch:
        """Turn messages into batches until ``until`` is done; returns the open batch.

        An empty batch waits for its first message. An open one does not wake up
        per message: it sleeps for the idle gap, then takes all that arrived
        meanwhile at once, and flushes when full, when due, or when a gap brought
        nothing (the broker has nothing more for now). At the fleet's steady rate
        that is a handful of wake-ups per batch instead of one per reading.

        When the link is lost, the open batch is committed anyway (its messages are
        not acknowledged: the broker sends them again on the next link, where they
        count as duplicates) and LinkError propagates.
        """
        try:
            while True:
                if not batch:
                    receiving = asyncio.ensure_future(link.receive())
                    await asyncio.wait({receiving, until}, return_when=asyncio.FIRST_COMPLETED)
                    if not receiving.done():
                        receiving.cancel()  # loses nothing: the message stays queued
                        return batch
                    self._take(link, receiving.result(), batch)  # LinkError: connection lost
                    self._take_queued(link, batch)
                    continue
                budget = self._policy.wait_budget(len(batch), time.monotonic() - batch.opened_at)
                # With the window full the link reads nothing more until batches are
                # acknowledged: waiting for the delay would only stall the pipeline.
                if budget and self._window.room > 0:
                    await asyncio.wait({until}, timeout=budget)
                    if until.done():
                        return batch
                    if self._take_queued(link, batch) and not self._policy.is_full(len(batch)):
                        continue
                batch = await self._flush(batch)
        except LinkError:
            await self._flush(batch)
            raise

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
        if topic == link.marker_topic:
            self._take_marker(link, message)
            return
        result = parse_message(topic, message.payload, message.received_at or clock.now(), self._rules)
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

    def _take_marker(self, link: BrokerLink, message: Publish) -> None:
        """A drain marker is no reading: acknowledged at once. Only this departure's
        token counts; one left by an earlier, unfinished departure is dropped."""
        link.ack([message])
        self._window.release(1)
        marker = self._marker
        if marker is not None and message.payload == marker.token and not marker.seen.done():
            marker.seen.set_result(None)

    async def _flush(self, batch: Batch) -> Batch:
        """Hand the batch to the committer (waits while it is busy: back-pressure)."""
        if batch:
            for stream, count in batch.received.items():
                self._metrics.messages_received.labels(stream).inc(count)
            await self._batches.put(batch)
        return Batch()
