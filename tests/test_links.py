"""The broker links (fast and plain reader) against an in-process broker stand-in:
framing at any read boundary, acknowledgements in order, the read gate of the
in-flight window, TLS bytes already decrypted, losses, and leaving a session."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bridge.config import Settings, load_settings
from bridge.ingest.fast_link import FastLink
from bridge.ingest.inflight import InflightWindow
from bridge.ingest.link import LinkError, Publish
from bridge.ingest.paho_link import PahoLink
from bridge.ingest.plain_link import PlainLink
from tests.support.fake_broker import FakeBroker, FakeSession, packet, publish_packet
from tests.support.helpers import until
from tests.support.tls_certs import CertificateAuthority, openssl_available

pytestmark = pytest.mark.unit

LinkClass = Callable[[Settings, InflightWindow], PahoLink]
READERS = [pytest.param(FastLink, id="fast"), pytest.param(PlainLink, id="plain")]
WAIT_S = 30  # a failure bound, not a speed claim


def messages(count: int, start: int = 1) -> list[Publish]:
    return [Publish(f"meter/MTR-{n}", b'{"n": %d}' % n, n, 1) for n in range(start, start + count)]


def settings_for(port: int, **extra: str) -> Settings:
    return load_settings(environ={"FLEET_BRIDGE_MQTT_HOST": "127.0.0.1", "FLEET_BRIDGE_MQTT_PORT": str(port), **extra})


async def receive(link: PahoLink, count: int) -> list[Publish]:
    """The next ``count`` messages, as sent: each must carry the time it was read."""
    async with asyncio.timeout(WAIT_S):
        received = [await link.receive() for _ in range(count)]
    assert all(m.received_at is not None for m in received)
    return [m._replace(received_at=None) for m in received]


@pytest.fixture
async def broker() -> AsyncIterator[FakeBroker]:
    async with FakeBroker() as fake:
        yield fake


@pytest.mark.parametrize("link_class", READERS)
@pytest.mark.parametrize("pieces", [1, 7, 500])
async def test_publishes_arrive_whole_and_in_order_however_the_bytes_are_split(
    broker: FakeBroker, link_class: LinkClass, pieces: int
) -> None:
    """200 PUBLISH packets written in 1, 7 or 500 pieces come out of the link as the
    same 200 messages, in order, each counted in the window."""
    window = InflightWindow(1000)
    sent = messages(200)
    async with link_class(settings_for(broker.port), window) as link:
        session = await broker.session()
        await session.publish(sent, pieces=pieces)
        assert await receive(link, 200) == sent
        assert window.held == 200


@pytest.mark.parametrize("link_class", READERS)
async def test_acknowledgements_go_back_in_order_on_the_link(broker: FakeBroker, link_class: LinkClass) -> None:
    """ack() sends one PUBACK per QoS 1 message, in the order given; QoS 0 needs none."""
    window = InflightWindow(100)
    sent = [*messages(5), Publish("meter/MTR-0", b"{}", 0, 0)]
    async with link_class(settings_for(broker.port), window) as link:
        session = await broker.session()
        await session.publish(sent)
        received = await receive(link, 6)
        link.ack(list(reversed(received[:5])) + received[5:])
        await until(lambda: len(session.pubacks) == 5)
    assert session.pubacks == [5, 4, 3, 2, 1]


@pytest.mark.parametrize("link_class", READERS)
async def test_reading_stops_at_a_full_window_and_resumes_when_it_drains(
    broker: FakeBroker, link_class: LinkClass
) -> None:
    """With room for 10 messages and 50 sent, the link takes 10 and stops reading
    the socket; releasing them lets it read again, never holding more than 10."""
    window = InflightWindow(10)
    async with link_class(settings_for(broker.port), window) as link:
        session = await broker.session()
        await session.publish(messages(50))
        taken: list[Publish] = []
        while len(taken) < 50:
            expected = min(10, 50 - len(taken))
            await until(lambda: window.held == expected)  # noqa: B023 - awaited within the iteration
            await asyncio.sleep(0.05)  # a reader that ignored the gate would take more meanwhile
            assert window.held <= 10
            batch = list(iter(link.take_nowait, None))
            taken += [m._replace(received_at=None) for m in batch]
            link.ack(batch)
            window.release(len(batch))
    assert taken == messages(50)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    openssl_available()
    ca = CertificateAuthority(tmp_path_factory.mktemp("pki"), "ca")
    cert, key = ca.issue("broker", hosts=("127.0.0.1",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return ca.cert, context


@pytest.mark.parametrize("link_class", READERS)
async def test_tls_bytes_already_decrypted_are_read_without_a_new_socket_event(
    tls_files: tuple[Path, ssl.SSLContext], link_class: LinkClass
) -> None:
    """The SUBACK and 30 PUBLISH packets in one TLS write: the reader that takes a
    packet at a time leaves decrypted bytes in the TLS layer, which raise no socket
    readiness; all 30 must still come out (the broker sends nothing more)."""
    ca, context = tls_files
    sent = messages(30)
    async with FakeBroker(tls=context) as broker:
        broker.suback_extra = b"".join(publish_packet(m) for m in sent)
        settings = settings_for(broker.port, FLEET_BRIDGE_MQTT_TLS_CA_FILE=str(ca))
        async with link_class(settings, InflightWindow(100)) as link:
            assert await receive(link, 30) == sent


@pytest.mark.parametrize("link_class", READERS)
async def test_a_lost_connection_hands_over_what_arrived_then_raises(broker: FakeBroker, link_class: LinkClass) -> None:
    """Messages received before the broker vanished are still returned; then
    receive() raises LinkError naming the broker, and ``connected`` is false."""
    async with link_class(settings_for(broker.port), InflightWindow(100)) as link:
        session = await broker.session()
        await session.publish(messages(3))
        await receive(link, 1)
        session.drop()
        await until(lambda: not link.connected)  # the loss is known before the rest is taken
        assert await receive(link, 2) == messages(2, start=2)
        with pytest.raises(LinkError, match=f"127.0.0.1:{broker.port}"):
            await receive(link, 1)
        assert not link.connected


@pytest.mark.parametrize("link_class", READERS)
async def test_messages_not_taken_leave_the_window_with_their_link(broker: FakeBroker, link_class: LinkClass) -> None:
    """Of 5 messages received, 2 taken: when the link closes, the 3 never taken
    leave the window (the broker sends them again); the 2 taken stay until their
    batch is acknowledged."""
    window = InflightWindow(100)
    async with link_class(settings_for(broker.port), window) as link:
        session = await broker.session()
        await session.publish(messages(5))
        await until(lambda: window.held == 5)
        await receive(link, 2)
    assert window.held == 2


async def test_the_fast_reader_drops_a_link_that_breaks_the_framing(broker: FakeBroker) -> None:
    """A PUBLISH at QoS 2 on a QoS 1 subscription is a protocol error: the link is
    closed and receive() raises."""
    async with FastLink(settings_for(broker.port), InflightWindow(10)) as link:
        session = await broker.session()
        await session.send(packet(0x34, b"\x00\x01t\x00\x01\x00{}"))
        with pytest.raises(LinkError):
            await receive(link, 1)


@pytest.mark.parametrize("link_class", READERS)
@pytest.mark.parametrize("end_session", [False, True])
async def test_closing_keeps_or_ends_the_session(broker: FakeBroker, link_class: LinkClass, end_session: bool) -> None:
    """A plain close leaves the session to expire as configured; end_session says
    SessionExpiryInterval 0 in the DISCONNECT, which ends it at the broker."""
    link = link_class(settings_for(broker.port), InflightWindow(10))
    async with link:
        session: FakeSession = await broker.session()
        await link.close(end_session=end_session)
    await asyncio.wait_for(session.closed.wait(), WAIT_S)
    assert session.disconnect_properties is not None
    assert session.session_expiry_on_disconnect() == (0 if end_session else None)
