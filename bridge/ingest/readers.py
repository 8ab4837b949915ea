"""Which broker reader the daemon runs.

The fast reader (bridge/ingest/fast_link.py) reaches into paho's internals, so it
runs only where the installed paho-mqtt is a release it was verified against and
still has every attribute it uses; otherwise, or when the settings ask for it
(``FLEET_BRIDGE_MQTT_READER=plain``), the plain reader runs (paho's public API,
slower). The choice is logged and exported on ``fleet_bridge_build_info``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bridge.config import Settings
from bridge.ingest import paho_internals
from bridge.ingest.fast_link import FastLink
from bridge.ingest.intake import LinkFactory
from bridge.ingest.paho_link import PahoLink
from bridge.ingest.plain_link import PlainLink

__all__ = ["ReaderChoice", "choose_reader"]


@dataclasses.dataclass(frozen=True)
class ReaderChoice:
    name: Literal["fast", "plain"]
    link_class: type[PahoLink]
    why_plain: str | None = None  # set when the fast reader was refused

    def links(self, settings: Settings, *, adopt: str | None = None) -> LinkFactory:
        """Opens a link per connection: to the daemon's own session, or with ``adopt``
        to that client id's."""
        return functools.partial(self.link_class, settings, adopt=adopt)


def choose_reader(settings: Settings) -> ReaderChoice:
    if settings.mqtt.reader == "plain":
        return ReaderChoice("plain", PlainLink)
    probe = paho.Client(CallbackAPIVersion.VERSION2)
    refusal = paho_internals.fast_reader_refusal(
        paho_internals.installed_paho(), paho_internals.missing_attributes(probe)
    )
    if refusal is not None:
        return ReaderChoice("plain", PlainLink, refusal)
    return ReaderChoice("fast", FastLink)
