"""Bad input through the real broker and daemon: every bad message lands in
ingest_rejects with the right reason and its exact bytes; good ones are stored."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import asyncpg
import orjson
import pytest

from bridge import clock
from tests.support.helpers import BridgeProcess, meter_payload, publish_async, vehicle_payload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.clock]


def bad_corpus(prefix: str, now: datetime) -> list[tuple[str, bytes, str]]:
    """(topic, payload, expected reason) for every reason a message can reach us with.

    ``unknown_topic`` cannot arrive through the broker: the bridge subscribes only to
    ``meter/+`` and ``vehicle/+``. The parser's unit tests cover it.
    """
    ts = (now - timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    m = f"{prefix}meter/"
    return [
        (m + "BAD-JSON", b'{"ts": "' + ts.encode() + b'", "kwh_consumed_ac": ', "invalid_json"),
        (m + "BAD-UTF8", b'{"ts": "\xff\xfe", "kwh_consumed_ac": 1}', "invalid_json"),
        (m + "NAN", b'{"ts": "' + ts.encode() + b'", "kwh_consumed_ac": NaN}', "invalid_json"),
        (m + "ARRAY", b"[1, 2, 3]", "not_object"),
        (m + "NO-KWH", orjson.dumps({"ts": ts}), "missing_field"),
        (m + "STR-KWH", orjson.dumps({"ts": ts, "kwh_consumed_ac": "0.5"}), "bad_type"),
        (m + "NEG-KWH", orjson.dumps({"ts": ts, "kwh_consumed_ac": -1}), "out_of_range"),
        (f"{prefix}vehicle/SOC", orjson.dumps({"ts": ts, "kwh_delivered_dc": 1, "soc_pct": 120}), "out_of_range"),
        (m + "NAIVE", orjson.dumps({"ts": "2026-11-27T12:00:00", "kwh_consumed_ac": 1}), "bad_timestamp"),
        (m + "FUTURE", meter_payload(now + timedelta(hours=1)), "future_timestamp"),
        (m + "ANCIENT", meter_payload(now - timedelta(days=800)), "too_old"),
        (m + "x';DROP TABLE meter_current_state;--", meter_payload(ts), "bad_device_id"),
        (m + "MTR-A", orjson.dumps({"ts": ts, "kwh_consumed_ac": 1, "meter_id": "MTR-B"}), "id_mismatch"),
        (m + "HUGE", b'{"pad": "' + b"x" * 1_000_000 + b'"}', "payload_too_large"),
    ]


async def test_every_bad_message_is_kept_with_its_reason(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """Bad and good messages interleaved: rejects carry reason and raw bytes, good ones
    are stored, and the daemon keeps running."""
    now = clock.now()
    corpus = bad_corpus(prefix, now)
    good = [
        (f"{prefix}vehicle/EV-{n}", vehicle_payload(now - timedelta(minutes=1, seconds=n), 0.1 * n))
        for n in range(len(corpus))
    ]
    interleaved = [msg for pair in zip(good, [(t, p) for t, p, _ in corpus], strict=True) for msg in pair]

    bridge = start_bridge()
    await bridge.wait_ready()
    await publish_async(*broker, interleaved)

    async def all_rejects_in() -> bool:
        rejects: int = await db.fetchval(f'SELECT count(*) FROM "{schema}".ingest_rejects')
        return rejects >= len(corpus)

    await wait_for(all_rejects_in, timeout=60, what="every reject")
    stored = {
        (r["topic"], bytes(r["payload"])): (r["reason"], r["detail"])
        for r in await db.fetch(f'SELECT topic, payload, reason, detail FROM "{schema}".ingest_rejects')
    }
    assert {key: reason for key, (reason, _) in stored.items()} == {(t, p): r for t, p, r in corpus}
    assert all(detail for _, detail in stored.values())
    assert await db.fetchval(f'SELECT count(*) FROM "{schema}".vehicle_telemetry_history') == len(good)
    assert await db.fetchval(f'SELECT count(*) FROM "{schema}".meter_current_state') == 0
    assert bridge.proc is not None
    assert bridge.proc.poll() is None, "the daemon must keep running"
    assert bridge.metric("fleet_bridge_messages_rejected_total") == len(corpus)


async def test_redelivered_reject_is_stored_once(
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:
    """The same bad bytes on the same topic twice (at-least-once delivery) are one row."""
    bridge = start_bridge()
    await bridge.wait_ready()
    message = (f"{prefix}meter/M1", b"not json")
    await publish_async(*broker, [message, message, (f"{prefix}meter/M1", meter_payload(clock.now()))])

    async def reading_stored() -> bool:
        stored: int = await db.fetchval(f'SELECT count(*) FROM "{schema}".meter_telemetry_history')
        return stored == 1

    await wait_for(reading_stored, timeout=60, what="the good reading")
    assert await db.fetchval(f'SELECT count(*) FROM "{schema}".ingest_rejects') == 1
