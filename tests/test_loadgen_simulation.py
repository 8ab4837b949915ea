"""The simulated fleet: readings the bridge accepts, realistic charging, and runs
that depend on the seed alone."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import orjson
import pytest

from bridge.ingest.parse import ParseRules, Reading, parse_message
from loadgen.faults import FaultRates
from loadgen.plan import RunSpec, plan, slice_pairs
from loadgen.simulation import JITTER_MS, PairSim, SimReading, meter_id, reading_payload, rfc3339_ms, vehicle_id

pytestmark = pytest.mark.unit

START_MS = 1_795_780_800_000  # 2026-11-27T12:00:00Z
MINUTE_MS = 60_000


def run(pair: int, steps: int, *, seed: int = 1, interval_ms: int = MINUTE_MS) -> list[tuple[SimReading, SimReading]]:
    sim = PairSim(pair, seed=seed, start_ms=START_MS, interval_ms=interval_ms)
    return [sim.step(k) for k in range(steps)]


def test_ids_are_numbered_from_one_with_five_digits() -> None:
    """Pair 1 is EV-00001 charging from MTR-00001; the ids fit the contract's pattern."""
    assert (vehicle_id(1), meter_id(1)) == ("EV-00001", "MTR-00001")
    assert (vehicle_id(10_000), meter_id(10_000)) == ("EV-10000", "MTR-10000")


def test_one_meter_and_one_vehicle_reading_per_interval() -> None:
    """Interval k gives the pair's meter and vehicle one reading each, the meter's
    exactly one interval after the previous one, the vehicle's within 2 s of it."""
    readings = run(7, 120)
    meter_ts = [m.ts_ms for m, _ in readings]
    assert all(b - a == MINUTE_MS for a, b in itertools.pairwise(meter_ts))
    assert START_MS <= meter_ts[0] < START_MS + MINUTE_MS
    for meter, vehicle in readings:
        assert (meter.device_id, vehicle.device_id) == ("MTR-00007", "EV-00007")
        assert abs(vehicle.ts_ms - meter.ts_ms) <= JITTER_MS


def test_seq_counts_up_by_one_per_reading() -> None:
    """Both devices of a pair number their readings consecutively."""
    readings = run(3, 50)
    for stream in (0, 1):
        seqs = [pair[stream].seq for pair in readings]
        assert seqs == list(range(seqs[0], seqs[0] + 50))


def test_every_reading_is_valid_for_the_bridge() -> None:
    """Each payload parses with the bridge's own parser into the simulated values,
    the energy as the interval's kWh, with power, voltage, current, SOC and temperature."""
    rules = ParseRules(retention_days=36500)
    received = datetime.fromtimestamp(START_MS / 1000 + 86400, UTC)
    for meter, vehicle in run(11, 240):
        for reading in (meter, vehicle):
            parsed = parse_message(reading.topic, reading_payload(reading), received, rules)
            assert isinstance(parsed, Reading), parsed
            assert parsed.device_id == reading.device_id
            assert parsed.recorded_at.timestamp() * 1000 == pytest.approx(reading.ts_ms, abs=0.5)
            assert parsed.values[0] == reading.kwh
            assert parsed.seq == reading.seq
            assert None not in parsed.values


def test_timestamps_use_both_forms_of_the_contract() -> None:
    """Meters send epoch milliseconds, vehicles RFC 3339 with milliseconds and Z."""
    meter, vehicle = run(1, 1)[0]
    assert orjson.loads(reading_payload(meter))["ts"] == meter.ts_ms
    assert orjson.loads(reading_payload(vehicle))["ts"] == rfc3339_ms(vehicle.ts_ms)
    assert rfc3339_ms(START_MS + 1) == "2026-11-27T12:00:00.001Z"


def test_charging_sessions_deliver_dc_at_085_to_095_of_ac() -> None:
    """While charging, DC energy is AC energy times the session's efficiency (0.85-0.95,
    a little noise); away from the charger both are zero; power ramps up, then holds."""
    charging = idle = 0
    for pair in range(1, 41):
        for meter, vehicle in run(pair, 360):
            if meter.kwh == 0:
                assert vehicle.kwh == 0
                idle += 1
                continue
            charging += 1
            if meter.kwh > 0.01:  # rounding to 5 decimals dominates tiny intervals
                assert 0.83 <= vehicle.kwh / meter.kwh <= 0.97
            power = dict(meter.extra)["power_kw"]
            assert meter.kwh == pytest.approx(power / 60, rel=1e-3, abs=1e-4)
            assert power <= 22.0 * 1.05
    assert charging > 1000
    assert idle > 1000


def test_state_of_charge_rises_while_charging_and_stays_in_range() -> None:
    """SOC never leaves [0, 100] and rises over any interval that delivered energy."""
    readings = run(5, 1440)
    socs = [dict(v.extra)["soc_pct"] for _, v in readings]
    assert all(0 <= soc <= 100 for soc in socs)
    for (_, vehicle), before, after in zip(readings[1:], socs, socs[1:], strict=False):
        if vehicle.kwh > 0:
            assert after >= before


def test_the_same_seed_gives_the_same_readings_and_another_seed_others() -> None:
    """A pair's readings depend on the seed and its number only."""
    assert run(9, 30, seed=4) == run(9, 30, seed=4)
    assert run(9, 30, seed=4) != run(9, 30, seed=5)


def test_a_run_is_the_same_however_the_fleet_is_split_into_processes() -> None:
    """The slices of any process count cover every pair once, and the messages of
    all slices together are the messages of one process publishing everything."""
    spec = RunSpec(10, MINUTE_MS, 30, START_MS, 3, FaultRates(0.1, 0.1, 0.1, 0.1, 0.1))
    whole = plan(spec, slice_pairs(10, 1, 0))
    sliced = [message for i in range(3) for message in plan(spec, slice_pairs(10, 3, i))]
    assert [p for i in range(3) for p in slice_pairs(10, 3, i)] == list(range(1, 11))
    assert sorted(whole, key=repr) == sorted(sliced, key=repr)


def test_messages_come_in_order_of_publish_time() -> None:
    """The plan is ordered by due time although faults hold some messages back."""
    spec = RunSpec(20, MINUTE_MS, 60, START_MS, 1, FaultRates(0.2, 0.2, 0.2, 0.2, 0.2))
    due = [message.due_ms for message in plan(spec, range(1, 21))]
    assert due == sorted(due)
    assert len(due) > 2 * 20 * 60
