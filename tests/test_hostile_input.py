"""Hostile input: whatever a broken or malicious device sends ends as a reject with
a bounded detail, never as an exception, a crash or SQL; oversize payloads are
refused before any JSON parsing; the schema name cannot carry SQL. Fuzzed with
hypothesis and, where installed, atheris."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.ingest.parse import DEVICE_ID, KWH_LIMIT, ParseRules, Reading, Reject, RejectReason, parse_message
from tests.support.services import ROOT

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
RULES = ParseRules()
GOOD = {"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": 0.5}
# The parser's reason codes: db_error is the writer's.
REASONS = set(RejectReason) - {RejectReason.DB_ERROR}
# Rejects are stored: a detail quotes at most 80 characters of any input, escaped.
MAX_DETAIL = 1024
# The largest payload cap the settings allow: hostile JSON is refused at any cap.
LARGEST_CAP = ParseRules(max_payload_bytes=1 << 20)


def reject(topic: str, payload: bytes, rules: ParseRules = RULES) -> Reject:
    result = parse_message(topic, payload, NOW, rules)
    assert isinstance(result, Reject), result
    assert result.reason in REASONS
    assert len(result.detail) <= MAX_DETAIL
    return result


# --- size cap ---------------------------------------------------------------------


def test_an_oversize_payload_is_refused_before_json_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A payload over max_payload_bytes (here 1 MiB, valid JSON) is payload_too_large
    without the JSON parser ever seeing it; one at the limit is parsed."""
    calls: list[int] = []
    real_loads = orjson.loads

    def counting_loads(data: bytes) -> object:
        calls.append(len(data))
        return real_loads(data)

    monkeypatch.setattr(orjson, "loads", counting_loads)
    huge = orjson.dumps({**GOOD, "pad": "x" * (1 << 20)})
    assert reject("meter/M1", huge).reason == "payload_too_large"
    assert calls == []

    at_limit = orjson.dumps(GOOD).ljust(RULES.max_payload_bytes)
    assert isinstance(parse_message("meter/M1", at_limit, NOW, RULES), Reading)
    assert calls == [RULES.max_payload_bytes]


# --- hostile JSON ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # deeper than the JSON parser's recursion limit, within the size cap
        (b"[" * 2000 + b"]" * 2000, "invalid_json"),
        (b'{"a":' * 1500 + b"1" + b"}" * 1500, "invalid_json"),  # over the default cap
        # nested where a number belongs
        (orjson.dumps({**GOOD, "kwh_consumed_ac": [[[[1]]]]}), "bad_type"),
        (orjson.dumps({**GOOD, "ts": {"ts": GOOD["ts"]}}), "bad_type"),
        # numbers: too long for a double, or an integer too big for seq
        (b'{"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": ' + b"9" * 400 + b"}", "invalid_json"),
        (orjson.dumps({**GOOD, "seq": 2**64 - 1}), "out_of_range"),
        # invalid UTF-8: a bare continuation byte, an overlong "/", an encoded surrogate, a BOM
        (b'{"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": 1, "x": "\x80"}', "invalid_json"),
        (b'{"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": 1, "x": "\xc0\xaf"}', "invalid_json"),
        (b'{"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": 1, "x": "\xed\xa0\x80"}', "invalid_json"),
        (b'{"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": 1, "x": "\\ud800"}', "invalid_json"),
        (b'\xef\xbb\xbf{"ts": "2026-11-27T11:59:00Z", "kwh_consumed_ac": 1}', "invalid_json"),
        # control characters: raw inside a JSON string, escaped inside the timestamp
        (b'{"ts": "2026-11-27T11:59:00Z\x01", "kwh_consumed_ac": 1}', "invalid_json"),
        (orjson.dumps({**GOOD, "ts": "2026-11-27T11:59:00Z\x00"}), "bad_timestamp"),
        (orjson.dumps({**GOOD, "ts": "2026-11-27T11:59:00\nZ"}), "bad_timestamp"),
        (b"\x00" * 100, "invalid_json"),
        (b"", "invalid_json"),
    ],
)
def test_hostile_json_is_a_reject(payload: bytes, reason: str) -> None:
    """Deep nesting, absurd numbers, invalid UTF-8 and control characters each end
    as the reject that names them, with the default and the largest size cap."""
    for rules in (RULES, LARGEST_CAP):
        if len(payload) <= rules.max_payload_bytes:
            assert reject("meter/M1", payload, rules).reason == reason


def test_a_huge_string_in_a_field_gives_a_short_detail() -> None:
    """A field as long as the size cap allows is refused with a bounded detail."""
    long_ts = "2026-11-27T11:59:00Z" + "9" * 3000
    assert reject("meter/M1", orjson.dumps({**GOOD, "ts": long_ts})).reason == "bad_timestamp"
    long_id = "M" * 3000
    assert reject("meter/M1", orjson.dumps({**GOOD, "meter_id": long_id})).reason == "id_mismatch"


# --- device ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "device_id",
    [
        "'; DROP TABLE meter_current_state; --",
        "M1' OR '1'='1",
        'M1"; DELETE FROM ingest_rejects; --',
        "M1;SELECT pg_sleep(10)",
        "M1/*",
        "$(reboot)",
        "M1\x00",
        "M1\n",
        "M1\t",
        "M1\x1b[31m",
        "M1\u202e",  # right-to-left override
        "MТR-1",  # a Cyrillic letter in place of the T
        "Ｍ1",  # fullwidth
        "-M1",
        ".M1",
        "M" * 65,
        "meter/M1",
        "",
    ],
)
def test_a_device_id_that_is_not_plain_is_a_reject(device_id: str) -> None:
    """SQL, shell, control, bidi and look-alike characters, a leading symbol, or
    more than 64 characters in the topic's device id: bad_device_id."""
    for stream in ("meter", "vehicle"):
        payload = orjson.dumps({"ts": GOOD["ts"], "kwh_consumed_ac": 1, "kwh_delivered_dc": 1})
        assert reject(f"{stream}/{device_id}", payload).reason == "bad_device_id"


def test_sql_in_the_payloads_device_id_is_an_id_mismatch() -> None:
    """The payload may repeat the id only if it equals the topic's: SQL there is refused."""
    payload = orjson.dumps({**GOOD, "meter_id": "M1'; DROP TABLE x; --"})
    assert reject("meter/M1", payload).reason == "id_mismatch"


def test_the_longest_plain_device_id_is_accepted() -> None:
    """64 characters of the allowed alphabet are a device id (the boundary)."""
    result = parse_message("meter/" + "M" * 64, orjson.dumps(GOOD), NOW, RULES)
    assert isinstance(result, Reading)


# --- the schema name --------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    ['fleet"; DROP SCHEMA public CASCADE; --', "fleet; select 1", "Fleet", "fleet-a", "a b", "x" * 64, "", "1fleet"],
)
def test_a_schema_name_that_could_carry_sql_is_a_configuration_error(schema: str) -> None:
    """Only lower-case SQL identifiers of up to 63 characters become part of SQL text."""
    with pytest.raises(ConfigError, match="FLEET_BRIDGE_DB_SCHEMA"):
        load_settings(environ={"FLEET_BRIDGE_DB_SCHEMA": schema})


# --- fuzzing ------------------------------------------------------------------------

hostile_text = st.text(
    st.characters(codec="utf-8") | st.sampled_from(["'", '"', ";", "-", "/", "*", "%", "\x00", "\n", "\u202e"]),
    max_size=40,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | hostile_text
    | st.sampled_from(["2026-11-27T11:59:00Z", "2026-11-27T11:59:00+14:00", 1_795_780_740_000]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(hostile_text, children, max_size=3),
    max_leaves=12,
)
FIELDS = ["ts", "kwh_consumed_ac", "kwh_delivered_dc", "meter_id", "vehicle_id", "seq", "soc_pct", "power_kw"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.sampled_from(["meter", "vehicle", "gas"]),
    device_id=hostile_text | st.from_regex(DEVICE_ID, fullmatch=True),
    doc=st.dictionaries(st.sampled_from(FIELDS) | hostile_text, json_values, max_size=8),
    depth=st.sampled_from([0, 1, 1100]),
)
def test_fuzzed_messages_give_a_contract_result(
    stream: str, device_id: str, doc: dict[str, object], depth: int
) -> None:
    """Hostile topics and documents, bare or wrapped in arrays (1100 deep is past the
    JSON parser's limit): a Reading that keeps the contract's bounds, or a Reject
    with a contract reason and a bounded detail."""
    payload = b"[" * depth + orjson.dumps(doc) + b"]" * depth
    result = parse_message(f"{stream}/{device_id}", payload, NOW, LARGEST_CAP)
    if isinstance(result, Reading):
        assert DEVICE_ID.fullmatch(result.device_id)
        energy = result.values[0]
        assert energy is not None
        assert 0 <= energy < KWH_LIMIT
        assert all(v is None or math.isfinite(v) for v in result.values)
        assert result.recorded_at.utcoffset() is not None
    else:
        assert result.reason in REASONS
        assert len(result.detail) <= MAX_DETAIL


ATHERIS_RUNS = 50_000
SEEDS = {
    "meter": b"\x00" + orjson.dumps({**GOOD, "power_kw": 3.5, "seq": 1, "meter_id": "MTR-00001"}),
    "vehicle": b"\x01" + orjson.dumps({"ts": 1_795_780_740_000, "kwh_delivered_dc": 0.4, "soc_pct": 50}),
}


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")
def test_atheris_finds_no_crash_in_a_bounded_run(tmp_path: Path) -> None:
    """tests/fuzz_parse.py under libFuzzer for a fixed number of inputs from a fixed
    seed: no exception escapes the parser and no Reading breaks the bounds."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, seed in SEEDS.items():
        (corpus / name).write_bytes(seed)
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz_parse.py"), f"-runs={ATHERIS_RUNS}", "-seed=1",
         "-max_len=4200", f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {ATHERIS_RUNS} runs" in result.stderr
