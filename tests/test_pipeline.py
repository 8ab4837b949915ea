"""The daemon's loop (bridge.ingest.service.Bridge) in-process, with a fake broker
link and a fake writer: acknowledgement only after COMMIT and only on the link a
message came from, in arrival order, the open batch flushed on stop, and the
in-flight window released as batches are acknowledged."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self

import pytest

from bridge.config import Settings, load_settings
from bridge.ingest.batch import Batch
from bridge.ingest.inflight import InflightWindow
from bridge.ingest.intake import Departure, Outcome
from bridge.ingest.link import LinkError, Publish
from bridge.ingest.service import Bridge
from bridge.ingest.store import WriteOutcome
from bridge.metrics import Health, Metrics
from tests.support.helpers import until

pytestmark = pytest.mark.unit

WAIT_S = 30  # a failure bound, not a speed claim
TS = "2026-11-27T12:00:00Z"


def reading(mid: int) -> Publish:
    return Publish(f"meter/MTR-{mid}", b'{"ts": "%s", "kwh_consumed_ac": 0.5}' % TS.encode(), mid, 1)


class FakeLink:
    """A broker link the test feeds by hand; records what it acknowledged."""

    def __init__(self, window: InflightWindow, name: str) -> None:
        self.address = name
        self.marker_topic = f"fleet-bridge/drain/{name}"
        self.window = window
        self.acked: list[int] = []
        self.ended_session: bool | None = None  # how it was closed, once it was
        self.acked_at_close: list[int] | None = None  # what was acknowledged by then
        self.session_present = True
        self.left = False
        self.announced_leaving = False
        self.opened = asyncio.Event()
        self.closed = asyncio.Event()
        self._queue: collections.deque[Publish] = collections.deque()
        self._arrival = asyncio.Event()
        self._up = True

    @property
    def connected(self) -> bool:
        return self._up

    async def __aenter__(self) -> Self:
        self.opened.set()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, *, end_session: bool = False) -> None:
        if self.ended_session is None:
            self.ended_session = end_session
            self.acked_at_close = list(self.acked)
        self._up = False
        self.window.release(len(self._queue))
        self._queue.clear()
        self.closed.set()

    async def announce_leaving(self) -> None:
        self.announced_leaving = True

    async def leave(self, token: str) -> list[str]:
        """As the broker does: the marker comes back behind what the session held."""
        self.left = True
        self.deliver([Publish(self.marker_topic, token.encode(), 65000, 1)])
        return []

    def deliver(self, messages: Sequence[Publish]) -> None:
        self._queue.extend(messages)
        self.window.acquire(len(messages))
        self._arrival.set()

    def drop(self) -> None:
        self._up = False
        self._arrival.set()

    async def receive(self) -> Publish:
        while not self._queue:
            if not self._up:
                raise LinkError(f"lost {self.address}")
            self._arrival.clear()
            await self._arrival.wait()
        return self._queue.popleft()

    def take_nowait(self) -> Publish | None:
        return self._queue.popleft() if self._queue else None

    def ack(self, messages: Sequence[Publish]) -> None:
        assert self._up, "acknowledged on a link that is gone"
        self.acked += [m.mid for m in messages]


class FakeWriter:
    """Commits instantly unless ``gate`` is cleared, or the batch's first message id
    has a gate of its own in ``held``; records each batch's message ids."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.held: dict[int, asyncio.Event] = {}
        self.started: list[list[int]] = []
        self.committed: list[list[int]] = []

    async def write(self, batch: Batch) -> WriteOutcome:
        mids = [delivery.message.mid for delivery in batch.deliveries]
        self.started.append(mids)
        await self.gate.wait()
        if mids[0] in self.held:
            await self.held[mids[0]].wait()
        self.committed.append(mids)
        return WriteOutcome()


class Harness:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.links: list[FakeLink] = []
        self.writer = FakeWriter()
        self.metrics = Metrics()
        self.others_in_group = 1
        departure = Departure(
            leave_group=settings.mqtt.shared_group is not None,
            timeout_s=settings.mqtt.drain_timeout_s,
            others_in_group=self._others_in_group,
        )
        self.bridge = Bridge(
            settings, open_link=self._open, writer=self.writer, metrics=self.metrics, health=Health(),
            departure=departure,
        )  # fmt: skip
        self.stop = asyncio.Event()
        self.running: asyncio.Task[Outcome] | None = None

    async def _others_in_group(self) -> int:
        return self.others_in_group

    def _open(self, window: InflightWindow) -> FakeLink:
        link = FakeLink(window, f"fake-{len(self.links)}")
        self.links.append(link)
        return link

    async def link(self, index: int) -> FakeLink:
        await until(lambda: len(self.links) > index)
        await asyncio.wait_for(self.links[index].opened.wait(), WAIT_S)
        return self.links[index]


SETTINGS = {"FLEET_BRIDGE_BATCH_MAX_ROWS": "5", "FLEET_BRIDGE_BATCH_MAX_DELAY_MS": "50"}
IN_A_GROUP = {**SETTINGS, "FLEET_BRIDGE_MQTT_SHARED_GROUP": "fleet", "FLEET_BRIDGE_MQTT_DRAIN_TIMEOUT_S": "1"}


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The pipeline running; ``@pytest.mark.parametrize("harness", [env], indirect=True)``
    for other settings."""
    made = Harness(load_settings(environ=getattr(request, "param", SETTINGS)))
    made.running = asyncio.create_task(made.bridge.run(made.stop))
    yield made
    made.stop.set()
    made.writer.gate.set()
    await asyncio.wait_for(made.running, WAIT_S)


async def test_messages_are_acknowledged_only_after_their_batch_committed(harness: Harness) -> None:
    """While the writer has not returned, nothing is acknowledged; after, all of it."""
    harness.writer.gate.clear()
    link = await harness.link(0)
    link.deliver([reading(n) for n in (1, 2, 3)])
    await until(lambda: harness.writer.started == [[1, 2, 3]])
    await asyncio.sleep(0.05)
    assert link.acked == []
    harness.writer.gate.set()
    await until(lambda: link.acked == [1, 2, 3])


async def test_a_message_is_acknowledged_only_on_the_link_it_came_from(harness: Harness) -> None:
    """A batch taken from a link that dropped before its COMMIT is not acknowledged
    at all (the broker sends it again on the next link); the new link acknowledges
    only its own messages."""
    harness.writer.gate.clear()
    first = await harness.link(0)
    first.deliver([reading(n) for n in (1, 2)])
    await until(lambda: harness.writer.started == [[1, 2]])
    first.drop()
    second = await harness.link(1)
    second.deliver([reading(1), reading(7)])
    harness.writer.gate.set()
    await until(lambda: second.acked == [1, 7])
    assert first.acked == []
    assert harness.writer.committed == [[1, 2], [1, 7]]


async def test_stop_commits_and_acknowledges_the_open_batch_before_leaving(harness: Harness) -> None:
    """Messages taken just before stop is set (their batch still open) are committed
    and acknowledged, and only then is the link closed."""
    link = await harness.link(0)
    link.deliver([reading(n) for n in (1, 2, 3)])
    harness.stop.set()
    await asyncio.wait_for(link.closed.wait(), WAIT_S)
    assert harness.writer.committed == [[1, 2, 3]]
    assert link.acked == [1, 2, 3]


async def test_batches_commit_and_acknowledge_in_arrival_order(harness: Harness) -> None:
    """42 messages in batches of at most 5: committed and acknowledged in arrival order."""
    link = await harness.link(0)
    for start in range(1, 43, 6):
        link.deliver([reading(n) for n in range(start, min(start + 6, 43))])
        await asyncio.sleep(0)
    await until(lambda: len(link.acked) == 42)
    assert link.acked == list(range(1, 43))
    assert [mid for batch in harness.writer.committed for mid in batch] == list(range(1, 43))
    assert all(len(batch) <= 5 for batch in harness.writer.committed)


async def test_acknowledged_messages_leave_the_window_and_wake_a_paused_reader(harness: Harness) -> None:
    """The window counts messages until their acknowledgement; once the committer has
    acknowledged enough to drain it to half, a paused reader is told to read again."""
    harness.writer.gate.clear()
    link = await harness.link(0)
    window = harness.bridge.window
    woken: list[int] = []
    window.on_room(lambda: woken.append(window.held))
    # (2 committing + 1 queued + 1 filling) batches of 5: the window is full
    link.deliver([reading(n) for n in range(1, 21)])
    assert window.held == window.capacity == 20
    harness.writer.gate.set()
    await until(lambda: len(link.acked) == 20)
    assert window.held == 0
    assert woken
    assert all(held <= window.capacity // 2 for held in woken)
    assert harness.metrics.registry.get_sample_value("fleet_bridge_inflight_messages") == 0


@pytest.mark.parametrize("harness", [IN_A_GROUP], indirect=True)
async def test_leaving_a_shared_group_drains_the_session_before_ending_it(harness: Harness) -> None:
    """Stopped in a shared group, the pipeline leaves it: what the session held up to
    the drain marker is committed and acknowledged (the marker too), and only then
    is the session ended. The database is held until the marker has been taken, so
    the readings are committed after the drain and before the session may end."""
    harness.writer.gate.clear()
    link = await harness.link(0)
    link.deliver([reading(n) for n in range(1, 8)])
    harness.stop.set()
    await until(lambda: 65000 in link.acked)
    assert not link.closed.is_set()
    harness.writer.gate.set()
    assert harness.running is not None
    assert await asyncio.wait_for(harness.running, WAIT_S) is Outcome.ENDED
    assert link.announced_leaving
    assert [mid for mid in link.acked if mid != 65000] == list(range(1, 8))
    assert 65000 in link.acked  # the marker: no reading, acknowledged when taken
    assert link.ended_session is True
    assert link.acked_at_close is not None
    assert sorted(link.acked_at_close) == sorted(link.acked)
    assert harness.bridge.window.held == 0


@pytest.mark.parametrize("harness", [IN_A_GROUP], indirect=True)
async def test_a_departure_that_cannot_finish_keeps_the_session_and_acknowledges_nothing(harness: Harness) -> None:
    """With the database away, the deadline passes: the pipeline says UNSETTLED, the
    session is kept (not ended) and nothing that was not stored is acknowledged."""
    harness.writer.gate.clear()
    link = await harness.link(0)
    link.deliver([reading(n) for n in range(1, 4)])
    await until(lambda: harness.writer.started == [[1, 2, 3]])
    harness.stop.set()
    assert harness.running is not None
    assert await asyncio.wait_for(harness.running, WAIT_S) is Outcome.UNSETTLED
    assert link.ended_session is False
    assert link.acked == [65000]  # the drain marker only: no reading was stored
    assert harness.writer.committed == []


@pytest.mark.parametrize("harness", [IN_A_GROUP], indirect=True)
async def test_the_last_member_of_a_group_keeps_its_session_subscribed(harness: Harness) -> None:
    """With no other member of the group online, leaving would leave the group with
    no subscriber, and the broker would drop its readings: the replica acknowledges
    what it took and disconnects keeping its session (and subscription)."""
    harness.others_in_group = 0
    link = await harness.link(0)
    link.deliver([reading(n) for n in range(1, 4)])
    harness.stop.set()
    assert harness.running is not None
    assert await asyncio.wait_for(harness.running, WAIT_S) is Outcome.KEPT
    assert link.acked == [1, 2, 3]
    assert link.ended_session is False
    assert link.announced_leaving
    assert not link.left


async def test_two_batches_commit_at_once_and_are_acknowledged_in_arrival_order(harness: Harness) -> None:
    """With two commits in flight, a later batch may COMMIT first, but its messages
    are acknowledged only after every earlier batch's COMMIT; a third batch does not
    start committing while two wait to be acknowledged."""
    slow = harness.writer.held[1] = asyncio.Event()
    link = await harness.link(0)
    link.deliver([reading(n) for n in range(1, 6)])
    await until(lambda: len(harness.writer.started) == 1)
    link.deliver([reading(n) for n in range(6, 11)])
    await until(lambda: harness.writer.committed == [[6, 7, 8, 9, 10]])
    link.deliver([reading(n) for n in range(11, 16)])
    await asyncio.sleep(0.05)
    assert link.acked == []  # batch 2 committed, but batch 1 has not
    assert len(harness.writer.started) == 2  # no third commit while two are unacknowledged
    slow.set()
    await until(lambda: len(link.acked) == 15)
    assert link.acked == list(range(1, 16))
    assert harness.writer.committed == [[6, 7, 8, 9, 10], [1, 2, 3, 4, 5], [11, 12, 13, 14, 15]]
