"""The fence around paho's private attributes (bridge/ingest/paho_internals.py):
each one the fast reader uses exists on the installed paho, another paho release
or a missing attribute switches the daemon to the plain reader, and the daemon
says which reader runs."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import asyncpg
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge import clock
from bridge.config import load_settings
from bridge.ingest import paho_internals
from bridge.ingest.readers import choose_reader
from tests.support.fleet_data import count
from tests.support.helpers import UNVERIFIED_PAHO, BridgeProcess, meter_payload, publish_async, wait_for


@pytest.mark.unit
@pytest.mark.parametrize("attribute", sorted(paho_internals.PRIVATE_ATTRIBUTES))
def test_each_private_attribute_the_fast_reader_uses_exists(attribute: str) -> None:
    """A paho release that renames one of these breaks the fast reader: this names it."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    assert hasattr(client, attribute), (
        f"paho-mqtt {paho_internals.installed_paho()} has no {attribute} "
        f"(used for: {paho_internals.PRIVATE_ATTRIBUTES[attribute]}); the daemon falls back to the plain reader"
    )
    assert paho_internals.missing_attributes(client) == []


@pytest.mark.unit
def test_the_installed_paho_is_a_verified_release() -> None:
    """The project's own paho runs the fast reader. When this fails after an upgrade,
    check each attribute in PRIVATE_ATTRIBUTES against the new release's code, then
    add it to VERIFIED_PAHO."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    refusal = paho_internals.fast_reader_refusal(paho_internals.installed_paho(), [])
    assert refusal is None, refusal
    assert choose_reader(load_settings(environ={})).name == "fast"
    assert paho_internals.missing_attributes(client) == []


@pytest.mark.unit
@pytest.mark.parametrize(
    ("version", "missing", "refused"),
    [
        ("2.1.0", [], False),
        ("2.2.1.post1", [], False),
        ("2.10.0", [], True),
        ("2.20.1", [], True),
        ("2.3.0", [], True),
        ("3.0.0", [], True),
        ("2.0.0", [], True),
        ("2.2.0", ["_packet_handle"], True),
    ],
)
def test_another_release_or_a_missing_attribute_refuses_the_fast_reader(
    version: str, missing: list[str], refused: bool
) -> None:
    """Verified releases (2.1, 2.2) with every attribute run the fast reader; the
    reason given otherwise names the release or the attribute."""
    refusal = paho_internals.fast_reader_refusal(version, missing)
    assert (refusal is not None) == refused
    if refusal is not None:
        assert version in refusal
        assert all(name in refusal for name in missing)


@pytest.mark.unit
def test_a_client_without_an_attribute_or_a_reader_state_key_is_reported() -> None:
    """missing_attributes() looks: a client lacking one attribute, or whose reader
    state lacks a key, is reported by name."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    kept = {name: getattr(client, name) for name in paho_internals.PRIVATE_ATTRIBUTES if name != "_packet_handle"}
    kept["_in_packet"] = {key: value for key, value in kept["_in_packet"].items() if key != "to_process"}
    stub = cast(paho.Client, SimpleNamespace(**kept))
    assert paho_internals.missing_attributes(stub) == ["_packet_handle", "_in_packet[to_process]"]


@pytest.mark.unit
def test_every_private_attribute_the_fence_touches_is_listed() -> None:
    """A private attribute used in paho_internals.py but missing from
    PRIVATE_ATTRIBUTES would escape the canary above."""
    source = Path(paho_internals.__file__).read_text(encoding="utf-8")
    used = set(re.findall(r"\bclient\.(_[a-z]\w*)", source))
    assert used == set(paho_internals.PRIVATE_ATTRIBUTES)


@pytest.mark.unit
def test_the_plain_reader_runs_on_request_or_when_the_fast_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLEET_BRIDGE_MQTT_READER=plain chooses it outright; with another paho release
    installed, auto chooses it too and says why."""
    asked = choose_reader(load_settings(environ={"FLEET_BRIDGE_MQTT_READER": "plain"}))
    assert (asked.name, asked.why_plain) == ("plain", None)
    monkeypatch.setattr(paho_internals, "installed_paho", lambda: UNVERIFIED_PAHO)
    fallback = choose_reader(load_settings(environ={}))
    assert fallback.name == "plain"
    assert fallback.why_plain is not None
    assert UNVERIFIED_PAHO in fallback.why_plain


@pytest.mark.integration
@pytest.mark.parametrize("reader", ["unverified-paho"], indirect=True)
async def test_with_an_unverified_paho_the_daemon_says_it_runs_the_plain_reader(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """The daemon, seeing paho-mqtt 2.99.0, logs a warning naming that release,
    reports mqtt_reader=plain on start, and stores readings."""
    bridge = start_bridge()
    await bridge.wait_ready()
    await publish_async(*broker, [(f"{prefix}meter/MTR-1", meter_payload(clock.now()))])

    async def stored() -> bool:
        return await count(db, schema, "meter_telemetry_history") == 1

    await wait_for(stored, timeout=60, what="the reading")
    events = [json.loads(line) for line in bridge.logs().splitlines() if line.startswith("{")]
    [started] = [e for e in events if e["event"] == "bridge_started"]
    [warning] = [e for e in events if e["event"] == "mqtt_plain_reader"]
    assert started["mqtt_reader"] == "plain"
    assert UNVERIFIED_PAHO in warning["reason"]
