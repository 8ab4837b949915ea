"""What Mosquitto 2.0 does with a shared-subscription group whose member dies, pinned
as tests because docs/scaling.md and the "nothing lost" guarantee of several
replicas rest on it. Two plain MQTT v5 members (persistent sessions, manual
acknowledgement) stand in for bridge replicas; "dying" is dropping the TCP
connection without a DISCONNECT, which is what the broker sees of a kill -9."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.helpers import publish_async, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.fault]

IN_FLIGHT = 50  # the dying member's ReceiveMaximum: what it holds unacknowledged
BURST = 400  # messages per publish; the group splits them between the two members


class Member:
    """One group member with a persistent session; acknowledges only if ``ack``."""

    def __init__(self, broker: tuple[str, int], client_id: str, topic_filter: str, *, ack: bool, expiry_s: int) -> None:
        self.ack = ack
        self.received: list[int] = []
        self.redelivered: list[int] = []  # DUP flag set: sent to this session before
        self.session_present: bool | None = None
        self.dead = False
        self._unacked: list[int] = []  # message ids, while not acknowledging
        self._subscribed = threading.Event()
        self._unsubscribed = threading.Event()
        self._filter = topic_filter
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.client.manual_ack_set(True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_unsubscribe = lambda *_: self._unsubscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = expiry_s
        props.ReceiveMaximum = IN_FLIGHT
        self.client.connect(*broker, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(15):
            raise AssertionError(f"{client_id} did not subscribe")

    def _on_connect(self, client: paho.Client, _userdata: object, flags: paho.ConnectFlags, *_: object) -> None:
        self.session_present = flags.session_present
        client.subscribe(self._filter, qos=1)

    def _on_message(self, client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        number = int(message.payload)
        self.received.append(number)
        if message.dup:
            self.redelivered.append(number)
        if self.ack:
            client.ack(message.mid, message.qos)
        else:
            self._unacked.append(message.mid)

    def start_acking(self) -> None:
        """Acknowledge what is held, and from now on everything (frees the in-flight window)."""
        self.ack = True
        for mid in self._unacked:
            self.client.ack(mid, 1)

    def unsubscribe(self) -> None:
        self.client.unsubscribe(self._filter)
        if not self._unsubscribed.wait(15):
            raise AssertionError("no UNSUBACK")

    def die(self) -> None:
        """Stop and drop the connection without DISCONNECT, like a killed process."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert sock is not None
        sock.close()
        self.dead = True

    def leave(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def members() -> Iterator[list[Member]]:
    started: list[Member] = []
    yield started
    for member in started:
        if not member.dead:
            member.leave()


def burst(topic: str, first: int) -> list[tuple[str, bytes]]:
    return [(topic, str(n).encode()) for n in range(first, first + BURST)]


async def first_burst_split(
    broker: tuple[str, int], prefix: str, uid: str, members: list[Member]
) -> tuple[str, str, Member, Member]:
    """A fresh group of two members, the first never acknowledging, and a first
    burst split between them: half acknowledged by the other, a receive window in
    flight at the first. Returns (topic, group filter, first, other)."""
    topic = f"{prefix}probe"
    group_filter = f"$share/g{uid}/{topic}"
    first = Member(broker, f"a-{uid}", group_filter, ack=False, expiry_s=300)
    other = Member(broker, f"b-{uid}", group_filter, ack=True, expiry_s=300)
    members += [first, other]
    await publish_async(*broker, burst(topic, 0))
    await wait_for(
        lambda: _true(len(other.received) == BURST // 2 and len(first.received) == IN_FLIGHT),
        timeout=30, what="the first burst split between the members",
    )  # fmt: skip
    return topic, group_filter, first, other


async def test_dead_members_messages_wait_in_its_session_and_come_back_with_it(
    broker: tuple[str, int], prefix: str, uid: str, members: list[Member]
) -> None:
    """Mosquitto 2.0 shares a group's messages round-robin between its members'
    sessions, connected or not: (1) a member that dies keeps its unacknowledged
    in-flight messages in its session (they are NOT handed to the rest of the group);
    (2) while it is away, its turn of the round-robin still comes up, so half of the
    new messages (with two members) are queued for its session; (3) when it
    reconnects with the same client id it gets its in-flight messages again (DUP
    flag) and its queue. Every message reaches exactly one member, once, except the
    dead member's own redeliveries."""
    topic, group_filter, dying, other = await first_burst_split(broker, prefix, uid, members)
    in_flight = set(dying.received)
    dying.die()

    await publish_async(*broker, burst(topic, BURST))
    await wait_for(lambda: _true(len(other.received) == BURST), timeout=30, what="the survivor's share")
    assert not in_flight & set(other.received), "the dead member's in-flight messages went to the group"
    assert len([n for n in other.received if n >= BURST]) == BURST // 2, "new messages were not split"

    back = Member(broker, f"a-{uid}", group_filter, ack=True, expiry_s=300)
    members.append(back)
    everything = set(range(2 * BURST))
    await wait_for(
        lambda: _true(set(back.received) | set(other.received) == everything),
        timeout=30, what="every message after the member came back",
    )  # fmt: skip
    assert back.session_present
    assert set(back.redelivered) == in_flight
    assert len(back.received) == 2 * (BURST // 2)  # its half of both bursts, each once
    assert not set(back.received) & set(other.received)
    assert len(other.received) == len(set(other.received))


async def test_a_member_that_never_returns_loses_its_queue_when_its_session_expires(
    broker: tuple[str, int], prefix: str, uid: str, members: list[Member]
) -> None:
    """The limit of (2) above: a dead member's share waits only as long as its
    session lives. When the session expires the broker discards it with its
    in-flight and queued messages, and routes everything to the members left."""
    topic = f"{prefix}probe"
    group_filter = f"$share/g{uid}/{topic}"
    dying = Member(broker, f"a-{uid}", group_filter, ack=False, expiry_s=1)
    other = Member(broker, f"b-{uid}", group_filter, ack=True, expiry_s=300)
    members += [dying, other]
    await publish_async(*broker, burst(topic, 0))
    await wait_for(lambda: _true(len(other.received) == BURST // 2), timeout=30, what="the survivor's share")
    dying.die()

    probe = 10_000

    async def expired() -> bool:
        """True once a whole probe burst reaches the survivor: the dead session is gone."""
        nonlocal probe
        if set(range(probe, probe + 10)) <= set(other.received):
            return True
        probe += 10
        await publish_async(*broker, [(topic, str(n).encode()) for n in range(probe, probe + 10)])
        return False

    await wait_for(expired, timeout=60, what="the dead member's session to expire", every=0.5)
    back = Member(broker, f"a-{uid}", group_filter, ack=True, expiry_s=1)
    members.append(back)
    assert back.session_present is False
    lost = set(range(BURST)) - set(other.received) - set(back.received)
    assert len(lost) == BURST // 2  # the dead member's share of the burst: in flight and queued


async def test_a_member_that_unsubscribes_gets_no_new_share_but_keeps_its_queue(
    broker: tuple[str, int], prefix: str, uid: str, members: list[Member]
) -> None:
    """How a member can leave the group without stranding readings: after it
    UNSUBSCRIBEs, the round-robin no longer picks it (every new message goes to
    the others), yet the messages already queued in its session are still
    delivered to it. So leave = unsubscribe, take in and acknowledge everything,
    then end the session."""
    topic, _, leaving, other = await first_burst_split(broker, prefix, uid, members)
    leaving.unsubscribe()

    await publish_async(*broker, burst(topic, BURST))
    await wait_for(lambda: _true(len(other.received) == BURST // 2 + BURST), timeout=30, what="all new messages")
    leaving.start_acking()
    await wait_for(
        lambda: _true(len(leaving.received) == BURST // 2), timeout=30, what="the leaving member's queued share"
    )
    assert set(leaving.received) | set(other.received) == set(range(2 * BURST))
    assert not [n for n in leaving.received if n >= BURST]


async def _true(value: bool) -> bool:
    return value
