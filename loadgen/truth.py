"""The ground truth: the report the bridge must produce for what was published.

It follows docs/contract.md section 6 to the letter, independently of the SQL that
implements it, so an end-to-end run checks the report rather than repeating
it: each vehicle reading pairs with the nearest reading of its meter within
±5 s (ties: the earlier); unpaired readings are counted as unmatched and
summed nowhere; rows are per vehicle and UTC hour of the vehicle reading.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Final

from loadgen.simulation import SimReading, meter_id, vehicle_id

__all__ = [
    "HOUR_MS",
    "WINDOW_MS",
    "PublishedReadings",
    "hour_label",
    "hourly_truth",
    "nearest_meter",
    "report_order",
]

WINDOW_MS: Final = 5000
HOUR_MS: Final = 3_600_000

Row = dict[str, object]


def nearest_meter(vehicle_ts_ms: int, meter_ts_ms: Sequence[int]) -> int | None:
    """Index of the meter reading a vehicle reading pairs with, or None.

    ``meter_ts_ms`` is sorted and distinct. The window is closed (exactly 5 s
    pairs) and a tie between one reading before and one after goes to the earlier.
    """
    after = bisect.bisect_left(meter_ts_ms, vehicle_ts_ms)
    best: int | None = None
    for index in (after - 1, after):  # the earlier candidate first, so it wins a tie
        if 0 <= index < len(meter_ts_ms):
            distance = abs(meter_ts_ms[index] - vehicle_ts_ms)
            if distance <= WINDOW_MS and (best is None or distance < abs(meter_ts_ms[best] - vehicle_ts_ms)):
                best = index
    return best


def hour_label(ts_ms: int) -> str:
    """The UTC hour a timestamp falls in, as the report prints it: ``2026-11-27T13:00:00Z``."""
    return datetime.fromtimestamp(ts_ms // HOUR_MS * HOUR_MS // 1000, UTC).strftime("%Y-%m-%dT%H:00:00Z")


def hourly_truth(
    vehicle: str, vehicle_readings: Iterable[tuple[int, float]], meter_readings: Iterable[tuple[int, float]]
) -> list[Row]:
    """Report rows for one vehicle from its distinct readings and its meter's, as
    ``(ts_ms, kwh)`` pairs in any order; newest hour first."""
    meters = sorted(meter_readings)
    meter_ts = [ts for ts, _ in meters]
    hours: dict[int, list[float]] = {}  # hour -> [dc, ac, matched, unmatched]
    for ts, dc in sorted(vehicle_readings):
        acc = hours.setdefault(ts // HOUR_MS, [0.0, 0.0, 0, 0])
        paired = nearest_meter(ts, meter_ts)
        if paired is None:
            acc[3] += 1
        else:
            acc[0] += dc
            acc[1] += meters[paired][1]
            acc[2] += 1
    return [
        {
            "vehicle_id": vehicle,
            "hour": hour_label(hour * HOUR_MS),
            "total_dc_kwh": dc,
            "total_ac_kwh": ac,
            "efficiency": dc / ac if ac else None,
            "matched": int(matched),
            "unmatched": int(unmatched),
        }
        for hour, (dc, ac, matched, unmatched) in sorted(hours.items(), reverse=True)
    ]


def report_order(rows: Iterable[Row]) -> list[Row]:
    """Rows in the report's order: newest hour first, then by vehicle id."""
    by_vehicle = sorted(rows, key=lambda row: str(row["vehicle_id"]))
    return sorted(by_vehicle, key=lambda row: str(row["hour"]), reverse=True)


class PublishedReadings:
    """The distinct valid readings a publisher actually sent, compactly (16 bytes each)."""

    def __init__(self) -> None:
        self._ts: dict[str, array[int]] = {}
        self._kwh: dict[str, array[float]] = {}

    def add(self, reading: SimReading) -> None:
        """Record one reading; call once per reading, not per copy published."""
        if reading.device_id not in self._ts:
            self._ts[reading.device_id] = array("q")
            self._kwh[reading.device_id] = array("d")
        self._ts[reading.device_id].append(reading.ts_ms)
        self._kwh[reading.device_id].append(reading.kwh)

    def _of(self, device: str) -> Iterable[tuple[int, float]]:
        return zip(self._ts.get(device, ()), self._kwh.get(device, ()), strict=True)

    def rows(self, pairs: Iterable[int]) -> list[Row]:
        """Ground-truth rows of the given pairs, in report order."""
        rows: list[Row] = []
        for pair in pairs:
            rows += hourly_truth(vehicle_id(pair), self._of(vehicle_id(pair)), self._of(meter_id(pair)))
        return report_order(rows)
