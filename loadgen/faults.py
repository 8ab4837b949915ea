"""Fault mixes: what real devices and a real broker do to clean readings.

Pure: given the same random stream, the same readings get the same faults.
Every fault keeps the ground truth computable: a duplicate is byte-identical
to its original (stored once), a delayed reading keeps its ``ts`` (only its
publish time moves), a skewed vehicle reading is a valid reading no meter
reading is within 5 s of, and a malformed message is an extra message the
bridge must reject with one of the contract's reason codes.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Final

import orjson

from bridge.ingest.parse import RejectReason
from loadgen.simulation import JITTER_MS, SimReading, reading_document, reading_payload, rfc3339_ms

__all__ = [
    "FAULT_KINDS",
    "MALFORMED_REASONS",
    "FaultInjector",
    "FaultRates",
    "Outgoing",
    "malformed_message",
    "max_skew_ms",
]

FAULT_KINDS: Final = ("duplicates", "out_of_order", "late", "malformed", "skew_over_5s")
# Every reason code a subscriber can see. ``unknown_topic`` is left out: the
# bridge only subscribes to meter/+ and vehicle/+, so such a message never
# reaches it; ``db_error`` is the database's verdict, not the message's.
MALFORMED_REASONS: Final = tuple(
    reason for reason in RejectReason if reason not in (RejectReason.UNKNOWN_TOPIC, RejectReason.DB_ERROR)
)
ENERGY_FIELD: Final = {"meter": "kwh_consumed_ac", "vehicle": "kwh_delivered_dc"}
ID_FIELD: Final = {"meter": "meter_id", "vehicle": "vehicle_id"}
MIN_SKEW_MS: Final = 6000  # clearly outside the report's 5 s pairing window
MAX_SKEW_MS: Final = 30000
OUT_OF_ORDER_INTERVALS: Final = (1, 5)
LATE_MS: Final = (10 * 60_000, 3 * 3_600_000)
# Far outside any sensible max_future_skew and retention window (retention would
# have to exceed 25 years for this to be stored).
FUTURE_TS: Final = "2099-06-01T00:00:00.000Z"
ANCIENT_TS: Final = "2001-01-01T00:00:00.000Z"
OVERSIZE_BYTES: Final = 8192  # twice the bridge's default max_payload_bytes


@dataclasses.dataclass(frozen=True, slots=True)
class FaultRates:
    """Each a fraction in [0, 1] of the readings it may apply to."""

    duplicates: float = 0.0
    out_of_order: float = 0.0
    late: float = 0.0
    malformed: float = 0.0
    skew_over_5s: float = 0.0

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            if not 0.0 <= getattr(self, kind) <= 1.0:
                raise ValueError(f"{kind} must be a fraction between 0 and 1")
        if self.late + self.out_of_order > 1.0:
            raise ValueError("late + out_of_order must not exceed 1 (a reading is delayed once)")


@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish when simulated time reaches ``due_ms``.

    ``reading`` is set on exactly one message per valid reading (the first one
    published), so the ground truth counts each reading once whatever the
    duplicates; ``faults`` names the faults this message carries.
    """

    due_ms: int
    topic: str
    payload: bytes
    faults: tuple[str, ...] = ()
    reading: SimReading | None = None


def max_skew_ms(interval_ms: int) -> int:
    """The largest skew that still keeps a vehicle's readings in time order and
    more than 5 s from its meter's neighbouring readings too."""
    return min(MAX_SKEW_MS, interval_ms // 2 - JITTER_MS)


def malformed_message(reason: RejectReason, reading: SimReading) -> tuple[str, bytes]:
    """A (topic, payload) the bridge must reject with ``reason``, built from a real reading."""
    doc = reading_document(reading)
    topic = reading.topic
    energy = ENERGY_FIELD[reading.stream]
    if reason == RejectReason.INVALID_JSON:
        payload = reading_payload(reading)
        return topic, payload[: len(payload) // 2]
    if reason == RejectReason.NOT_OBJECT:
        return topic, orjson.dumps([doc])
    if reason == RejectReason.MISSING_FIELD:
        del doc[energy]
    elif reason == RejectReason.BAD_TYPE:
        doc[energy] = str(doc[energy])
    elif reason == RejectReason.OUT_OF_RANGE:
        # JSON has no NaN: out of range means a finite value beyond the limits.
        doc[energy] = -0.5 if reading.stream == "meter" else 1000.0
    elif reason == RejectReason.BAD_TIMESTAMP:
        doc["ts"] = rfc3339_ms(reading.ts_ms).removesuffix("Z")  # no offset: ambiguous
    elif reason == RejectReason.FUTURE_TIMESTAMP:
        doc["ts"] = FUTURE_TS
    elif reason == RejectReason.TOO_OLD:
        doc["ts"] = ANCIENT_TS
    elif reason == RejectReason.BAD_DEVICE_ID:
        topic = f"{reading.stream}/-{reading.device_id}"
        del doc[ID_FIELD[reading.stream]]
    elif reason == RejectReason.ID_MISMATCH:
        doc[ID_FIELD[reading.stream]] = f"{reading.device_id}0"
    elif reason == RejectReason.PAYLOAD_TOO_LARGE:
        doc["note"] = "x" * OVERSIZE_BYTES
    else:
        raise ValueError(f"unknown reason {reason!r}")
    return topic, orjson.dumps(doc)


class FaultInjector:
    """Turns each interval's pair of clean readings into the messages to publish."""

    def __init__(self, rates: FaultRates, rng: random.Random, *, interval_ms: int, end_ms: int) -> None:
        """``end_ms`` is the end of the simulated run: no message is held beyond it."""
        if rates.skew_over_5s and max_skew_ms(interval_ms) < MIN_SKEW_MS:
            raise ValueError("--skew-over-5s needs an interval of at least 16 s")
        self._rates = rates
        self._rng = rng
        self._interval_ms = interval_ms
        self._end_ms = end_ms

    def inject(self, meter: SimReading, vehicle: SimReading) -> list[Outgoing]:
        rng = self._rng
        faults: tuple[str, ...] = ()
        if rng.random() < self._rates.skew_over_5s:
            offset = rng.randint(MIN_SKEW_MS, max_skew_ms(self._interval_ms)) * rng.choice((-1, 1))
            vehicle = dataclasses.replace(vehicle, ts_ms=meter.ts_ms + offset)
            faults = ("skew_over_5s",)
        return [*self._messages(meter, ()), *self._messages(vehicle, faults)]

    def _messages(self, reading: SimReading, faults: tuple[str, ...]) -> list[Outgoing]:
        rng, rates = self._rng, self._rates
        delay, roll = 0, rng.random()
        if roll < rates.late:
            delay, faults = rng.randint(*LATE_MS), (*faults, "late")
        elif roll < rates.late + rates.out_of_order:
            low, high = OUT_OF_ORDER_INTERVALS
            delay, faults = rng.randint(low * self._interval_ms, high * self._interval_ms), (*faults, "out_of_order")
        due = self._held_until(reading.ts_ms, delay)
        payload = reading_payload(reading)
        out = [Outgoing(due, reading.topic, payload, faults, reading)]
        if rng.random() < rates.duplicates:
            out.append(
                Outgoing(
                    self._held_until(due, rng.randint(0, 2 * self._interval_ms)),
                    reading.topic,
                    payload,
                    ("duplicates",),
                )
            )
        if rng.random() < rates.malformed:
            reason = rng.choice(MALFORMED_REASONS)
            topic, bad = malformed_message(reason, reading)
            out.append(Outgoing(reading.ts_ms, topic, bad, ("malformed", f"malformed:{reason}")))
        return out

    def _held_until(self, ts_ms: int, delay_ms: int) -> int:
        """Publish time of a message delayed by ``delay_ms``, never past the end of the run."""
        return max(ts_ms, min(ts_ms + delay_ms, self._end_ms))
