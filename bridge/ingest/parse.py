"""Pure parsing: (topic, payload bytes, receive time) -> a Reading or a Reject.

Nothing here does IO or raises on bad input: every way a message can be wrong
maps to one of the contract's reason codes, with a human-readable detail.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Final, NamedTuple

import orjson

from bridge.streams import STREAMS, VEHICLE, StreamSpec
from bridge.timeparse import TimeFormatError, parse_rfc3339

__all__ = ["ParseRules", "Reading", "Reject", "RejectReason", "oldest_accepted_day", "parse_message"]

DEVICE_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
# Epoch-millisecond timestamps outside these years are almost surely seconds or garbage.
EPOCH_MS_MIN: Final = 946_684_800_000  # 2000-01-01
EPOCH_MS_MAX: Final = 4_102_444_800_000  # 2100-01-01
KWH_LIMIT: Final = 1000.0
SEQ_MAX: Final = 2**63 - 1
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class RejectReason(enum.StrEnum):
    """Why a message is in ``ingest_rejects``: the one list of reason codes.

    docs/contract.md section 2 says what each means, with an example; the
    migration's CHECK constraint, the metrics' ``reason`` label and the load
    generator's malformed messages are tested against this list.
    """

    INVALID_JSON = "invalid_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    TOO_OLD = "too_old"
    BAD_DEVICE_ID = "bad_device_id"
    ID_MISMATCH = "id_mismatch"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNKNOWN_TOPIC = "unknown_topic"
    # Not the parser's: the writer's, for a reading the database itself refused.
    DB_ERROR = "db_error"


class Reading(NamedTuple):
    """One valid reading; ``values`` follow ``stream.value_fields``.

    A NamedTuple, not a frozen dataclass: one is built per message, and a frozen
    dataclass sets each field through ``object.__setattr__``, which costs several
    times more (docs/benchmarks.md).
    """

    stream: StreamSpec
    device_id: str
    recorded_at: datetime
    received_at: datetime
    values: tuple[float | None, ...]
    seq: int | None
    topic: str
    payload: bytes


class Reject(NamedTuple):
    """A message that cannot be stored as a reading, and why."""

    reason: RejectReason
    detail: str
    topic: str
    payload: bytes
    received_at: datetime


@dataclasses.dataclass(frozen=True, slots=True)
class ParseRules:
    """The settings the parser depends on."""

    topic_prefix: str = ""
    max_payload_bytes: int = 4096
    max_future_skew: timedelta = timedelta(seconds=300)
    retention_days: int = 400


class _Invalid(Exception):
    """Internal: carries a reason code out of the nested checks."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def oldest_accepted_day(now: datetime, retention_days: int) -> date:
    """First UTC day still inside the retention window (older readings are too_old)."""
    return _days_before(now.astimezone(UTC).date(), retention_days)


@functools.lru_cache(maxsize=8)
def _days_before(day: date, days: int) -> date:
    # Asked once per message, with a new answer once a day.
    return day - timedelta(days=days)


def parse_message(topic: str, payload: bytes, received_at: datetime, rules: ParseRules) -> Reading | Reject:
    """Validate one MQTT message; never raises on any input."""
    try:
        return _parse(topic, payload, received_at, rules)
    except _Invalid as bad:
        return Reject(bad.reason, bad.detail, topic, payload, received_at)


def _parse(topic: str, payload: bytes, received_at: datetime, rules: ParseRules) -> Reading:
    spec, device_id = _split_topic(topic, rules.topic_prefix)
    if len(payload) > rules.max_payload_bytes:
        raise _Invalid(RejectReason.PAYLOAD_TOO_LARGE, f"{len(payload)} bytes > limit {rules.max_payload_bytes}")
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _Invalid(RejectReason.INVALID_JSON, f"not UTF-8 JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _Invalid(RejectReason.NOT_OBJECT, f"payload is a JSON {type(doc).__name__}, not an object")

    named = doc.get(spec.id_field)
    if named is not None:
        if not isinstance(named, str):
            raise _Invalid(RejectReason.BAD_TYPE, f"{spec.id_field} must be a string")
        if named != device_id:
            raise _Invalid(RejectReason.ID_MISMATCH, f"{spec.id_field} {named[:80]!r} != topic id {device_id!r}")

    if "ts" not in doc:
        raise _Invalid(RejectReason.MISSING_FIELD, "ts is required")
    recorded_at = _timestamp(doc["ts"])
    if recorded_at - received_at > rules.max_future_skew:
        raise _Invalid(RejectReason.FUTURE_TIMESTAMP, f"ts {recorded_at.isoformat()} is ahead of receive time")
    if recorded_at.date() < oldest_accepted_day(received_at, rules.retention_days):
        raise _Invalid(RejectReason.TOO_OLD, f"ts {recorded_at.isoformat()} is outside the retention window")

    if spec.energy_field not in doc or doc[spec.energy_field] is None:
        raise _Invalid(RejectReason.MISSING_FIELD, f"{spec.energy_field} is required")
    values = tuple([_number(doc, name) for name in spec.value_fields])
    energy = values[0]
    assert energy is not None  # checked just above
    if not 0.0 <= energy < KWH_LIMIT:
        raise _Invalid(RejectReason.OUT_OF_RANGE, f"{spec.energy_field}={energy} not in [0, {KWH_LIMIT:g})")
    if spec is VEHICLE:
        soc = values[2]
        if soc is not None and not 0.0 <= soc <= 100.0:
            raise _Invalid(RejectReason.OUT_OF_RANGE, f"soc_pct={soc} not in [0, 100]")
    return Reading(spec, device_id, recorded_at, received_at, values, _seq(doc), topic, payload)


def _split_topic(topic: str, prefix: str) -> tuple[StreamSpec, str]:
    if not topic.startswith(prefix):
        raise _Invalid(RejectReason.UNKNOWN_TOPIC, "topic lacks the configured prefix")
    stream, sep, device_id = topic[len(prefix) :].partition("/")
    spec = STREAMS.get(stream)
    if spec is None or not sep:
        raise _Invalid(RejectReason.UNKNOWN_TOPIC, "expected meter/{id} or vehicle/{id}")
    if DEVICE_ID.fullmatch(device_id) is None:
        raise _Invalid(RejectReason.BAD_DEVICE_ID, f"device id {device_id[:80]!r} is not allowed")
    return spec, device_id


def _timestamp(raw: object) -> datetime:
    if type(raw) is str:
        return _rfc3339(raw)  # the common case, first
    if isinstance(raw, bool):
        raise _Invalid(RejectReason.BAD_TYPE, "ts must be an RFC 3339 string or epoch milliseconds")
    if isinstance(raw, int | float):
        if not (math.isfinite(raw) and EPOCH_MS_MIN <= raw < EPOCH_MS_MAX):
            raise _Invalid(RejectReason.BAD_TIMESTAMP, f"ts {raw!r} is not epoch milliseconds in 2000-2099")
        return EPOCH + timedelta(milliseconds=raw)
    if not isinstance(raw, str):
        raise _Invalid(RejectReason.BAD_TYPE, "ts must be an RFC 3339 string or epoch milliseconds")
    return _rfc3339(raw)


def _rfc3339(raw: str) -> datetime:
    try:
        return parse_rfc3339(raw)
    except TimeFormatError as exc:
        raise _Invalid(RejectReason.BAD_TIMESTAMP, f"ts {exc}") from None


def _number(doc: dict[str, object], name: str) -> float | None:
    raw = doc.get(name)
    if type(raw) is float and math.isfinite(raw):
        return raw  # the common case, first
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _Invalid(RejectReason.BAD_TYPE, f"{name} must be a number")
    try:
        value = float(raw)
    except OverflowError:
        raise _Invalid(RejectReason.OUT_OF_RANGE, f"{name} is too large") from None
    if not math.isfinite(value):
        raise _Invalid(RejectReason.OUT_OF_RANGE, f"{name} must be finite")
    return value


def _seq(doc: dict[str, object]) -> int | None:
    raw = doc.get("seq")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise _Invalid(RejectReason.BAD_TYPE, "seq must be an integer")
    if not 0 <= raw <= SEQ_MAX:
        raise _Invalid(RejectReason.OUT_OF_RANGE, "seq must be between 0 and 2^63-1")
    return raw
