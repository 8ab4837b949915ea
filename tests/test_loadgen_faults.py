"""Fault mixes: each keeps the ground truth computable and does what its name says."""

from __future__ import annotations

import collections
import itertools
import random
from datetime import UTC, datetime

import pytest

from bridge.ingest.parse import ParseRules, Reading, Reject, RejectReason, parse_message
from loadgen.faults import MALFORMED_REASONS, FaultInjector, FaultRates, Outgoing, malformed_message
from loadgen.plan import RunSpec, plan
from loadgen.simulation import PairSim, SimReading

pytestmark = pytest.mark.unit

START_MS = 1_795_780_800_000  # 2026-11-27T12:00:00Z
MINUTE_MS = 60_000
STEPS = 600
END_MS = START_MS + STEPS * MINUTE_MS
RECEIVED = datetime.fromtimestamp(END_MS / 1000, UTC)


def messages(rates: FaultRates, pairs: int = 10) -> list[tuple[SimReading, SimReading, list[Outgoing]]]:
    """Per interval and pair: the clean readings and the messages made of them."""
    out = []
    for pair in range(1, pairs + 1):
        sim = PairSim(pair, seed=1, start_ms=START_MS, interval_ms=MINUTE_MS)
        injector = FaultInjector(rates, random.Random(pair), interval_ms=MINUTE_MS, end_ms=END_MS)
        for k in range(STEPS):
            meter, vehicle = sim.step(k)
            out.append((meter, vehicle, injector.inject(meter, vehicle)))
    return out


def counted(rates: FaultRates) -> collections.Counter[str]:
    return collections.Counter(f for _, _, batch in messages(rates) for m in batch for f in m.faults)


def test_no_faults_means_each_reading_once_published_at_its_own_time() -> None:
    """Without faults every reading is one message, due at its ts, counted for the truth."""
    for meter, vehicle, batch in messages(FaultRates()):
        assert [(m.reading, m.due_ms, m.faults) for m in batch] == [
            (meter, meter.ts_ms, ()),
            (vehicle, vehicle.ts_ms, ()),
        ]


@pytest.mark.parametrize("kind", ["duplicates", "out_of_order", "late", "malformed"])
def test_each_fraction_applies_to_about_that_share_of_readings(kind: str) -> None:
    """A fraction of 0.1 touches about 10 % of the 12,000 readings (binomial bounds)."""
    rates = FaultRates(**{kind: 0.1})
    assert 1000 < counted(rates)[kind] < 1400


def test_skew_applies_to_about_that_share_of_vehicle_readings() -> None:
    """--skew-over-5s is a fraction of the vehicle readings (6,000 here)."""
    assert 450 < counted(FaultRates(skew_over_5s=0.1))["skew_over_5s"] < 750


def test_a_duplicate_is_the_same_bytes_published_later_and_counted_once() -> None:
    """A duplicate repeats its original's topic and payload, is due no earlier and
    carries no reading, so the ground truth counts the reading once."""
    found = 0
    for _, _, batch in messages(FaultRates(duplicates=0.2)):
        for original, copy in itertools.pairwise(batch):
            if copy.faults == ("duplicates",):
                found += 1
                assert (copy.topic, copy.payload) == (original.topic, original.payload)
                assert original.due_ms <= copy.due_ms <= END_MS
                assert original.reading is not None
                assert copy.reading is None
    assert found > 0


def test_delayed_readings_keep_their_timestamp_and_stay_within_the_run() -> None:
    """Out-of-order readings are held back 1-5 intervals, late ones 10 min to 3 h,
    neither beyond the end of the run; the reading itself is unchanged."""
    for meter, vehicle, batch in messages(FaultRates(out_of_order=0.3, late=0.3)):
        for message in batch:
            assert message.reading in (meter, vehicle)
            assert message.reading is not None
            delay = message.due_ms - message.reading.ts_ms
            if message.due_ms == END_MS:
                assert delay >= 0
            elif "late" in message.faults:
                assert 10 * MINUTE_MS <= delay <= 180 * MINUTE_MS
            elif "out_of_order" in message.faults:
                assert MINUTE_MS <= delay <= 5 * MINUTE_MS
            else:
                assert delay == 0


def test_skewed_vehicle_readings_are_more_than_5_s_from_every_meter_reading() -> None:
    """A skewed vehicle reading is 6-30 s off its own meter reading, so no meter
    reading of its pair is within the report's ±5 s: it is unmatched."""
    batches = messages(FaultRates(skew_over_5s=0.2), pairs=2)
    meter_ts: dict[str, set[int]] = {m.device_id: set() for m, _, _ in batches}
    for meter, _, _ in batches:
        meter_ts[meter.device_id].add(meter.ts_ms)
    skewed = 0
    for meter, _, batch in batches:
        for message in batch:
            if "skew_over_5s" in message.faults:
                skewed += 1
                assert message.reading is not None
                ts = message.reading.ts_ms
                assert 6000 <= abs(ts - meter.ts_ms) <= 30000
                assert min(abs(ts - m) for m in meter_ts[meter.device_id]) > 5000
    assert skewed > 0


@pytest.mark.parametrize("reason", MALFORMED_REASONS)
@pytest.mark.parametrize("stream", [0, 1], ids=["meter", "vehicle"])
def test_each_malformed_message_is_rejected_by_the_bridge_for_its_reason(reason: RejectReason, stream: int) -> None:
    """The bridge's own parser, at its default settings, rejects each kind of
    malformed message with exactly the reason code it is labelled with."""
    reading = PairSim(1, seed=1, start_ms=START_MS, interval_ms=MINUTE_MS).step(0)[stream]
    topic, payload = malformed_message(reason, reading)
    parsed = parse_message(topic, payload, RECEIVED, ParseRules())
    assert isinstance(parsed, Reject)
    assert parsed.reason == reason, parsed.detail


def test_malformed_messages_are_extra_and_labelled_with_their_reason() -> None:
    """A malformed message comes in addition to the valid reading it was made from,
    carries no reading, and every reason occurs."""
    reasons: collections.Counter[str] = collections.Counter()
    for _, _, batch in messages(FaultRates(malformed=0.3)):
        valid = [m for m in batch if m.reading is not None]
        assert len(valid) == 2
        for message in batch:
            if "malformed" in message.faults:
                assert message.reading is None
                (label,) = [f for f in message.faults if f.startswith("malformed:")]
                reasons[label.removeprefix("malformed:")] += 1
                assert isinstance(parse_message(message.topic, message.payload, RECEIVED, ParseRules()), Reject)
    assert set(reasons) == set(MALFORMED_REASONS)


def test_every_message_counted_for_the_truth_is_accepted_by_the_bridge() -> None:
    """With every fault on, the messages carrying a reading are all valid and the
    distinct (device, ts) among them are exactly the readings."""
    spec = RunSpec(10, MINUTE_MS, 240, START_MS, 1, FaultRates(0.1, 0.1, 0.1, 0.1, 0.1))
    keys = []
    for message in plan(spec, range(1, 11)):
        if message.reading is not None:
            parsed = parse_message(message.topic, message.payload, RECEIVED, ParseRules())
            assert isinstance(parsed, Reading)
            keys.append((parsed.device_id, parsed.recorded_at))
    assert len(keys) == len(set(keys)) == 2 * 10 * 240


@pytest.mark.parametrize(
    ("rates", "message"),
    [
        (dict(duplicates=1.5), "duplicates must be a fraction"),
        (dict(late=0.6, out_of_order=0.6), "must not exceed 1"),
    ],
)
def test_impossible_rates_are_refused(rates: dict[str, float], message: str) -> None:
    """Fractions outside [0, 1], or more readings delayed than there are, are errors."""
    with pytest.raises(ValueError, match=message):
        FaultRates(**rates)


def test_skew_needs_an_interval_that_leaves_room_for_it() -> None:
    """With readings 10 s apart no skew can be over 5 s from every meter reading."""
    with pytest.raises(ValueError, match="interval"):
        FaultInjector(FaultRates(skew_over_5s=0.1), random.Random(1), interval_ms=10_000, end_ms=END_MS)
