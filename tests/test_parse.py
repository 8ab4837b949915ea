"""The parser: every contract reason code, and no exception on any input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.ingest.parse import ParseRules, Reading, Reject, parse_message
from bridge.streams import METER, VEHICLE

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
RULES = ParseRules()


def parse(topic: str, payload: bytes | dict[str, object], rules: ParseRules = RULES) -> Reading | Reject:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return parse_message(topic, raw, NOW, rules)


def reason(topic: str, payload: bytes | dict[str, object], rules: ParseRules = RULES) -> str:
    result = parse(topic, payload, rules)
    assert isinstance(result, Reject), f"expected a reject, got {result}"
    return result.reason


def test_valid_meter_reading_keeps_every_field() -> None:
    """A full meter payload becomes a Reading with values in table column order."""
    result = parse(
        "meter/MTR-00001",
        {"ts": "2026-11-27T11:59:00.123Z", "kwh_consumed_ac": 0.5, "power_kw": 30, "voltage_v": 230.1,
         "current_a": 130.4, "seq": 7, "meter_id": "MTR-00001", "firmware": "ignored"},
    )  # fmt: skip
    assert isinstance(result, Reading)
    assert result.stream is METER
    assert result.device_id == "MTR-00001"
    assert result.recorded_at == datetime(2026, 11, 27, 11, 59, 0, 123000, tzinfo=UTC)
    assert result.values == (0.5, 30.0, 230.1, 130.4)
    assert result.seq == 7


def test_vehicle_reading_with_epoch_millis_and_offset_time_agree() -> None:
    """Epoch milliseconds and an RFC 3339 time with an offset name the same instant."""
    millis = parse("vehicle/EV-1", {"ts": 1_795_779_540_000, "kwh_delivered_dc": 0.4})
    offset = parse("vehicle/EV-1", {"ts": "2026-11-27T12:39:00+01:00", "kwh_delivered_dc": 0.4})
    assert isinstance(millis, Reading)
    assert isinstance(offset, Reading)
    assert millis.stream is VEHICLE
    assert millis.recorded_at == offset.recorded_at == datetime(2026, 11, 27, 11, 39, tzinfo=UTC)
    assert millis.values == (0.4, None, None, None)


def test_topic_prefix_is_required_and_stripped() -> None:
    """With a prefix configured, only topics under it are readings."""
    rules = ParseRules(topic_prefix="site-a/")
    ok = parse("site-a/meter/M1", {"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": 1}, rules)
    assert isinstance(ok, Reading)
    assert ok.device_id == "M1"
    assert reason("meter/M1", {"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": 1}, rules) == "unknown_topic"


GOOD_TS = "2026-11-27T11:59:00Z"


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("meter/M1", b"{not json", "invalid_json"),
        ("meter/M1", b"\xff\xfe\x00garbage", "invalid_json"),
        ("meter/M1", b'{"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": NaN}', "invalid_json"),
        ("meter/M1", b"[1, 2]", "not_object"),
        ("meter/M1", b'"text"', "not_object"),
        ("meter/M1", {"kwh_consumed_ac": 1}, "missing_field"),
        ("meter/M1", {"ts": GOOD_TS}, "missing_field"),
        ("vehicle/EV1", {"ts": GOOD_TS, "kwh_consumed_ac": 1}, "missing_field"),
        ("meter/M1", {"ts": GOOD_TS, "kwh_consumed_ac": "1.0"}, "bad_type"),
        ("meter/M1", {"ts": GOOD_TS, "kwh_consumed_ac": True}, "bad_type"),
        ("meter/M1", {"ts": True, "kwh_consumed_ac": 1}, "bad_type"),
        ("meter/M1", {"ts": GOOD_TS, "kwh_consumed_ac": 1, "seq": 1.5}, "bad_type"),
        ("meter/M1", {"ts": GOOD_TS, "kwh_consumed_ac": 1, "meter_id": 5}, "bad_type"),
        ("meter/M1", {"ts": GOOD_TS, "kwh_consumed_ac": -0.1}, "out_of_range"),
        ("meter/M1", {"ts": GOOD_TS, "kwh_consumed_ac": 1000}, "out_of_range"),
        # JSON has no NaN or Infinity; a literal that overflows a double is refused too.
        ("meter/M1", b'{"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": 1e400}', "invalid_json"),
        ("vehicle/EV1", {"ts": GOOD_TS, "kwh_delivered_dc": 1, "soc_pct": 100.5}, "out_of_range"),
        ("meter/M1", {"ts": GOOD_TS, "kwh_consumed_ac": 1, "seq": -1}, "out_of_range"),
        ("meter/M1", {"ts": "2026-11-27T11:59:00", "kwh_consumed_ac": 1}, "bad_timestamp"),
        ("meter/M1", {"ts": "yesterday", "kwh_consumed_ac": 1}, "bad_timestamp"),
        ("meter/M1", {"ts": "2026-02-30T11:59:00Z", "kwh_consumed_ac": 1}, "bad_timestamp"),
        ("meter/M1", {"ts": 1_795_780_740, "kwh_consumed_ac": 1}, "bad_timestamp"),
        ("meter/M1", {"ts": "2026-11-27T12:05:01Z", "kwh_consumed_ac": 1}, "future_timestamp"),
        ("meter/M1", {"ts": "2024-01-01T00:00:00Z", "kwh_consumed_ac": 1}, "too_old"),
        ("meter/'; DROP TABLE x;--", {"ts": GOOD_TS, "kwh_consumed_ac": 1}, "bad_device_id"),
        ("meter/a\x00b", {"ts": GOOD_TS, "kwh_consumed_ac": 1}, "bad_device_id"),
        ("meter/", {"ts": GOOD_TS, "kwh_consumed_ac": 1}, "bad_device_id"),
        ("meter/M1", {"ts": GOOD_TS, "kwh_consumed_ac": 1, "meter_id": "M2"}, "id_mismatch"),
        ("meter/M1", b" " * 4097, "payload_too_large"),
        ("gas/G1", {"ts": GOOD_TS, "kwh_consumed_ac": 1}, "unknown_topic"),
        ("meter", {"ts": GOOD_TS, "kwh_consumed_ac": 1}, "unknown_topic"),
    ],
)
def test_each_bad_message_gets_its_reason(topic: str, payload: bytes | dict[str, object], expected: str) -> None:
    """Every contract reason code is produced by the input that deserves it."""
    assert reason(topic, payload) == expected


def test_reject_keeps_topic_and_raw_bytes() -> None:
    """A reject carries the exact bytes received, for the dead-letter table."""
    raw = b'{"ts": 1, "kwh_consumed_ac": \xff}'
    result = parse("meter/M1", raw)
    assert isinstance(result, Reject)
    assert (result.topic, result.payload, result.received_at) == ("meter/M1", raw, NOW)
    assert result.detail


def test_skew_limit_is_inclusive() -> None:
    """A reading exactly max_future_skew ahead is accepted; one microsecond more is not."""
    edge = NOW + timedelta(seconds=300)
    assert isinstance(parse("meter/M1", {"ts": edge.isoformat(), "kwh_consumed_ac": 1}), Reading)
    later = (edge + timedelta(microseconds=1)).isoformat()
    assert reason("meter/M1", {"ts": later, "kwh_consumed_ac": 1}) == "future_timestamp"


def test_deeply_nested_json_is_a_reject_not_a_crash() -> None:
    """Nesting beyond the JSON parser's limit is invalid_json (with a large size cap)."""
    deep = b"[" * 5000 + b"]" * 5000
    assert reason("meter/M1", deep, ParseRules(max_payload_bytes=1 << 20)) == "invalid_json"


@settings(max_examples=2000, deadline=None)
@given(topic=st.text(max_size=80), payload=st.binary(max_size=600))
def test_parser_never_raises_on_arbitrary_bytes(topic: str, payload: bytes) -> None:
    """Any topic and any bytes give a Reading or a Reject, never an exception."""
    assert isinstance(parse_message(topic, payload, NOW, RULES), Reading | Reject)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=1000, deadline=None)
@given(
    stream=st.sampled_from(["meter", "vehicle"]),
    fields=st.dictionaries(
        st.sampled_from(["ts", "kwh_consumed_ac", "kwh_delivered_dc", "meter_id", "vehicle_id", "seq", "soc_pct",
                         "power_kw"]),
        json_values | st.integers(min_value=1_700_000_000_000, max_value=1_800_000_000_000),
    ),
)  # fmt: skip
def test_parser_never_raises_on_plausible_json(stream: str, fields: dict[str, object]) -> None:
    """Well-formed JSON with the right keys but arbitrary values never raises either."""
    result = parse_message(f"{stream}/D1", orjson.dumps(fields), NOW, RULES)
    if isinstance(result, Reading):
        assert 0 <= (result.values[0] or 0) < 1000
