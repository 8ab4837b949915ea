"""The simulated fleet: pure, deterministic, no IO.

Each vehicle/meter pair is an independent state machine driven by its own
random stream seeded from ``(seed, pair number)``. So a pair behaves the same
whichever process simulates it and whatever other pairs run beside it: a run
is reproducible from its seed alone, for any ``--processes``.

The model, per pair and interval: the vehicle is either away (driving, its
state of charge slowly falling) or plugged into the charger its meter feeds.
A charging session ramps power up over a few minutes, holds the charger's
rating, tapers above 80 % state of charge and ends at the driver's target
charge or departure time. The meter measures the charger's AC input; the
vehicle reports the DC energy that reached its battery, AC times the
session's efficiency (0.85-0.95) with a little noise. ``kwh_*`` values are the
energy of the interval, as the contract requires, so they can be summed.
"""

from __future__ import annotations

import dataclasses
import math
import random
from datetime import UTC, datetime
from typing import Final, Literal

import orjson

__all__ = [
    "JITTER_MS",
    "PairSim",
    "SimReading",
    "meter_id",
    "reading_document",
    "reading_payload",
    "rfc3339_ms",
    "vehicle_id",
]

# A vehicle's clock and its meter's differ by at most this much.
JITTER_MS: Final = 2000
CHARGER_RATINGS_KW: Final = (7.4, 11.0, 22.0)  # single-phase 32 A, three-phase 16 A and 32 A
RAMP_S: Final = 180.0
TAPER_FROM_SOC: Final = 80.0
MEAN_AWAY_S: Final = 4 * 3600.0
MEAN_SESSION_S: Final = 5 * 3600.0
DRIVING_KWH_PER_S: Final = 0.002  # ~7 kWh per hour of driving, spread over the time away


def vehicle_id(pair: int) -> str:
    """Pairs are numbered from 1: ``EV-00001`` charges from ``MTR-00001``."""
    return f"EV-{pair:05d}"


def meter_id(pair: int) -> str:
    return f"MTR-{pair:05d}"


@dataclasses.dataclass(frozen=True, slots=True)
class SimReading:
    """One reading as a device would send it; ``kwh`` is the interval's energy."""

    stream: Literal["meter", "vehicle"]
    device_id: str
    ts_ms: int
    kwh: float
    seq: int
    extra: tuple[tuple[str, float], ...]

    @property
    def topic(self) -> str:
        """The topic without the deployment's prefix."""
        return f"{self.stream}/{self.device_id}"


def rfc3339_ms(ts_ms: int) -> str:
    """``2026-11-27T12:00:00.123Z``: the form vehicles send."""
    stamp = datetime.fromtimestamp(ts_ms // 1000, UTC)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{ts_ms % 1000:03d}Z"


def reading_document(reading: SimReading) -> dict[str, object]:
    """The JSON object a device publishes. Meters send ``ts`` as epoch milliseconds
    and vehicles as RFC 3339, so both forms of the contract are exercised."""
    if reading.stream == "meter":
        doc: dict[str, object] = {"meter_id": reading.device_id, "ts": reading.ts_ms, "kwh_consumed_ac": reading.kwh}
    else:
        doc = {"vehicle_id": reading.device_id, "ts": rfc3339_ms(reading.ts_ms), "kwh_delivered_dc": reading.kwh}
    doc.update(reading.extra)
    doc["seq"] = reading.seq
    return doc


def reading_payload(reading: SimReading) -> bytes:
    return orjson.dumps(reading_document(reading))


@dataclasses.dataclass
class _Session:
    efficiency: float
    target_soc: float
    ends_after_s: float
    plugged_s: float = 0.0


class PairSim:
    """One vehicle and the meter of its charger, advanced one interval at a time."""

    def __init__(self, pair: int, *, seed: int, start_ms: int, interval_ms: int) -> None:
        self.pair = pair
        self._rng = random.Random(f"{seed}:pair:{pair}")  # noqa: S311 - a simulation, not cryptography
        rng = self._rng
        self._interval_s = interval_ms / 1000
        self._interval_ms = interval_ms
        # Devices do not all report on the same second: each has its own phase.
        self._first_ms = start_ms + rng.randrange(interval_ms)
        self._rating_kw = rng.choice(CHARGER_RATINGS_KW)
        self._phases = 1 if self._rating_kw < 10 else 3
        self._capacity_kwh = rng.uniform(40.0, 100.0)
        self._ambient_c = rng.uniform(5.0, 25.0)
        self._battery_c = self._ambient_c
        self._soc = rng.uniform(20.0, 80.0)
        self._seq0 = rng.randrange(1_000_000)
        self._session: _Session | None = None
        if rng.random() < 0.3:  # some vehicles are already charging when the run starts
            self._session = self._new_session()
            self._session.plugged_s = rng.uniform(0.0, RAMP_S * 2)

    def _new_session(self) -> _Session:
        rng = self._rng
        return _Session(
            efficiency=rng.uniform(0.85, 0.95),
            target_soc=rng.uniform(80.0, 100.0),
            ends_after_s=rng.expovariate(1 / MEAN_SESSION_S),
        )

    def step(self, k: int) -> tuple[SimReading, SimReading]:
        """The meter's and the vehicle's reading for interval ``k`` (call with k = 0, 1, 2, ...)."""
        rng = self._rng
        ac_kw, dc_kw = self._advance_session()
        ac_kwh = round(ac_kw * self._interval_s / 3600, 5)
        dc_kwh = round(dc_kw * self._interval_s / 3600, 5)
        if self._session is not None:
            self._soc = min(100.0, self._soc + dc_kwh / self._capacity_kwh * 100)
        else:
            self._soc = max(5.0, self._soc - DRIVING_KWH_PER_S * self._interval_s / self._capacity_kwh * 100)
        # The pack warms towards ambient + 0.8 degC per kW of charging power.
        self._battery_c += (self._ambient_c + 0.8 * dc_kw - self._battery_c) * min(1.0, self._interval_s / 900)

        meter_ts = self._first_ms + k * self._interval_ms
        voltage = rng.gauss(230.0, 1.5)
        current = ac_kw * 1000 / (voltage * self._phases)
        meter = SimReading(
            "meter",
            meter_id(self.pair),
            meter_ts,
            ac_kwh,
            self._seq0 + k,
            (("power_kw", round(ac_kw, 3)), ("voltage_v", round(voltage, 1)), ("current_a", round(current, 2))),
        )
        vehicle = SimReading(
            "vehicle",
            vehicle_id(self.pair),
            meter_ts + rng.randint(-JITTER_MS, JITTER_MS),
            dc_kwh,
            self._seq0 + k,
            (
                ("power_kw", round(dc_kw, 3)),
                ("soc_pct", round(self._soc, 2)),
                ("battery_temp_c", round(self._battery_c, 1)),
            ),
        )
        self._maybe_plug_in()
        return meter, vehicle

    def _advance_session(self) -> tuple[float, float]:
        """AC and DC power over this interval; ends the session when it is over."""
        session = self._session
        if session is None:
            return 0.0, 0.0
        if self._soc >= session.target_soc or session.plugged_s >= session.ends_after_s:
            self._session = None
            return 0.0, 0.0
        rng = self._rng
        ramp = min(1.0, (session.plugged_s + self._interval_s) / RAMP_S)
        taper = 1.0 if self._soc < TAPER_FROM_SOC else max(0.2, 1 - (self._soc - TAPER_FROM_SOC) / 25)
        ac_kw = max(0.0, self._rating_kw * ramp * taper * rng.gauss(1.0, 0.01))
        efficiency = min(0.99, max(0.5, rng.gauss(session.efficiency, 0.003)))
        session.plugged_s += self._interval_s
        return ac_kw, ac_kw * efficiency

    def _maybe_plug_in(self) -> None:
        """Away vehicles arrive at the charger at random (mean time away MEAN_AWAY_S)."""
        if self._session is None and self._rng.random() < -math.expm1(-self._interval_s / MEAN_AWAY_S):
            self._session = self._new_session()
