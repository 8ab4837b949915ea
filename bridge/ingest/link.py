"""What the daemon needs from a broker connection, and the parts every
connection shares: subscriptions, CONNECT properties, TLS options.

Two implementations: bridge/ingest/fast_link.py reads the socket itself (the
default), bridge/ingest/plain_link.py lets paho read it through its public API
(used when the installed paho is not a verified release, or on request).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self
from urllib.parse import quote

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.config import Settings
from bridge.errors import BridgeError
from bridge.ingest.wire import Publish
from bridge.streams import STREAM_NAMES

__all__ = [
    "QOS",
    "BrokerLink",
    "Delivery",
    "LinkError",
    "Publish",
    "connect_properties",
    "control_topic",
    "side_client",
    "subscription_filters",
    "tls_options",
    "warn_if_tls_insecure",
]

log = structlog.get_logger("bridge.ingest.link")

QOS = 1


class LinkError(BridgeError):
    """The broker connection failed or was lost; the message names the broker."""


class BrokerLink(Protocol):
    """One connection to the broker, used for one session's life: messages come in
    through ``receive``/``take_nowait`` and are acknowledged with ``ack`` on the
    same link once stored. A fresh link per connection, so the message ids of a
    dead connection are never acknowledged on a new one."""

    address: str  # host:port, for log lines and errors
    marker_topic: str  # where this session's drain marker comes back (see leave)
    session_present: bool  # the broker had a session for this client id when it connected

    @property
    def connected(self) -> bool: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def receive(self) -> Publish:
        """The next message, waiting for one; ``LinkError`` once the link is lost.
        Cancelling it loses nothing: a message stays queued until returned."""
        ...

    def take_nowait(self) -> Publish | None:
        """The next message already received, or None; never waits."""
        ...

    def ack(self, messages: Sequence[Publish]) -> None:
        """Acknowledge messages received on this link, in order."""
        ...

    async def announce_leaving(self) -> None:
        """Say (retained, on this replica's presence topic) that it is leaving its group."""
        ...

    async def leave(self, token: str) -> list[str]:
        """Unsubscribe and queue a drain marker carrying ``token`` on ``marker_topic``;
        returns the filters this session had no subscription to."""
        ...

    async def close(self, *, end_session: bool = False) -> None:
        """Disconnect; ``end_session`` ends the session at the broker too."""
        ...


class Delivery(NamedTuple):
    """A message and the link it came from: what acknowledging it takes."""

    link: BrokerLink
    message: Publish


def control_topic(kind: str, client_id: str) -> str:
    """``fleet-bridge/<kind>/<client id>`` (presence, drain markers), the client id
    made safe for a topic name. These topics take no prefix."""
    return f"fleet-bridge/{kind}/{quote(client_id, safe='')}"


def subscription_filters(settings: Settings) -> list[str]:
    """``meter/+`` and ``vehicle/+`` under the prefix, shared when a group is set."""
    filters = [f"{settings.mqtt.topic_prefix}{stream}/+" for stream in STREAM_NAMES]
    group = settings.mqtt.shared_group
    return [f"$share/{group}/{f}" for f in filters] if group else filters


def connect_properties(settings: Settings, receive_maximum: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    # A non-zero expiry plus clean_start=False keeps the session (subscriptions and
    # unacknowledged messages) across restarts of the bridge.
    props.SessionExpiryInterval = settings.mqtt.session_expiry_s
    props.ReceiveMaximum = receive_maximum
    return props


def warn_if_tls_insecure(settings: Settings) -> None:
    """Once per process: the broker's certificate name goes unchecked."""
    if settings.mqtt.tls_ca_file is not None and settings.mqtt.tls_insecure:
        log.warning("mqtt_tls_insecure", detail="the broker certificate's host name is not checked")


def tls_options(settings: Settings) -> dict[str, Any] | None:
    """Keyword arguments of paho's ``tls_set`` (and aiomqtt's ``TLSParameters``),
    or None without TLS: the server certificate is always verified; only its host
    name check can be switched off (``tls_insecure``)."""
    mqtt = settings.mqtt
    if mqtt.tls_ca_file is None:
        return None
    return {
        "ca_certs": mqtt.tls_ca_file,
        "certfile": mqtt.tls_cert_file,
        "keyfile": mqtt.tls_key_file,
        "cert_reqs": ssl.CERT_REQUIRED,
        "tls_version": ssl.PROTOCOL_TLS_CLIENT,
    }


def side_client(settings: Settings, purpose: str, **options: Any) -> aiomqtt.Client:
    """An aiomqtt client for a side connection (``check``, presence, the broker's
    $SYS figures): the intake's broker, login and TLS, and a client id of its own
    (``<client id>-<purpose>``; reusing the intake's would take over its session)."""
    mqtt = settings.mqtt
    tls = tls_options(settings)
    return aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        identifier=f"{mqtt.client_id}-{purpose}",
        username=mqtt.username,
        password=settings.mqtt_password(),
        tls_params=aiomqtt.TLSParameters(**tls) if tls else None,
        tls_insecure=mqtt.tls_insecure or None,
        **options,
    )
