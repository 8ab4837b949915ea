"""The ground truth: docs/contract.md section 6's pairing rule and hourly rows, computed
independently of the report's SQL."""

from __future__ import annotations

import pytest

from loadgen.simulation import SimReading
from loadgen.truth import PublishedReadings, Row, hour_label, hourly_truth, nearest_meter, report_order

pytestmark = pytest.mark.unit

H12 = 1_795_780_800_000  # 2026-11-27T12:00:00Z
S = 1000


@pytest.mark.parametrize(
    ("vehicle", "meters", "expected"),
    [
        (H12, [H12 + 5000], 0),  # exactly 5.000 s after: inside
        (H12, [H12 - 5000], 0),  # exactly 5.000 s before: inside
        (H12, [H12 + 5001], None),  # 5.001 s: outside
        (H12, [H12 - 5001], None),
        (H12, [H12 - 3000, H12 + 3000], 0),  # a tie goes to the earlier
        (H12, [H12 - 5000, H12 + 5000], 0),  # a tie at the edge of the window too
        (H12, [H12 - 3001, H12 + 3000], 1),  # otherwise the nearest wins
        (H12, [H12 - 4000, H12 - 1000, H12 + 2000], 1),
        (H12, [H12], 0),  # same instant
        (H12, [], None),
        (H12, [H12 - 60_000, H12 + 60_000], None),
    ],
)
def test_a_vehicle_reading_pairs_with_the_nearest_meter_reading_within_5_s(
    vehicle: int, meters: list[int], expected: int | None
) -> None:
    """Nearest within ±5 s inclusive; on a tie the earlier meter reading; else none."""
    assert nearest_meter(vehicle, meters) == expected


def test_hours_are_labelled_like_the_report() -> None:
    """The UTC hour a reading falls in, as RFC 3339 with Z and whole seconds."""
    assert hour_label(H12) == "2026-11-27T12:00:00Z"
    assert hour_label(H12 + 3_599_999) == "2026-11-27T12:00:00Z"
    assert hour_label(H12 - 1) == "2026-11-27T11:00:00Z"


def test_rows_sum_matched_readings_per_hour_newest_first() -> None:
    """Matched readings add their DC and their meter's AC; an unmatched one only
    counts; the efficiency is DC / AC; the newest hour comes first."""
    vehicle = [(H12 + 10 * S, 0.9), (H12 + 70 * S, 1.8), (H12 + 200 * S, 5.0), (H12 - 50 * S, 0.45)]
    meter = [(H12 + 70 * S + 2000, 2.0), (H12 + 11 * S, 1.0), (H12 - 51 * S, 0.5)]
    rows = hourly_truth("EV-00001", vehicle, meter)
    assert rows == [
        {
            "vehicle_id": "EV-00001",
            "hour": "2026-11-27T12:00:00Z",
            "total_dc_kwh": pytest.approx(2.7),
            "total_ac_kwh": pytest.approx(3.0),
            "efficiency": pytest.approx(0.9),
            "matched": 2,
            "unmatched": 1,
        },
        {
            "vehicle_id": "EV-00001",
            "hour": "2026-11-27T11:00:00Z",
            "total_dc_kwh": 0.45,
            "total_ac_kwh": 0.5,
            "efficiency": 0.9,
            "matched": 1,
            "unmatched": 0,
        },
    ]


def test_the_hour_is_the_vehicle_readings_even_when_its_meter_reading_is_in_the_next() -> None:
    """A vehicle reading at 12:59:59 paired with a meter reading at 13:00:01 counts in 12:00."""
    rows = hourly_truth("EV-00001", [(H12 + 3_599_000, 1.0)], [(H12 + 3_601_000, 1.1)])
    assert [row["hour"] for row in rows] == ["2026-11-27T12:00:00Z"]


def test_an_hour_without_ac_energy_has_no_efficiency() -> None:
    """Idle hours (AC 0) and hours with only unmatched readings have efficiency null."""
    idle = hourly_truth("EV-00001", [(H12, 0.0)], [(H12, 0.0)])
    unmatched = hourly_truth("EV-00001", [(H12, 1.0)], [])
    assert idle[0] | {"efficiency": None} == idle[0]
    assert (idle[0]["matched"], idle[0]["unmatched"]) == (1, 0)
    assert unmatched[0]["total_dc_kwh"] == unmatched[0]["total_ac_kwh"] == 0
    assert (unmatched[0]["efficiency"], unmatched[0]["matched"], unmatched[0]["unmatched"]) == (None, 0, 1)


def test_a_meter_reading_can_pair_with_two_vehicle_readings() -> None:
    """Pairing is per vehicle reading (a LATERAL probe): a meter reading nearest to
    two vehicle readings is summed for both."""
    rows = hourly_truth("EV-00001", [(H12, 1.0), (H12 + 4000, 1.0)], [(H12 + 2000, 1.25)])
    assert (rows[0]["total_ac_kwh"], rows[0]["matched"]) == (2.5, 2)


def test_rows_are_in_the_reports_order() -> None:
    """Newest hour first, then by vehicle id, as ``fleet-bridge report`` prints them."""
    rows: list[Row] = [
        {"vehicle_id": v, "hour": h} for v, h in [("EV-2", "12"), ("EV-1", "11"), ("EV-1", "12"), ("EV-3", "11")]
    ]
    assert [(r["vehicle_id"], r["hour"]) for r in report_order(rows)] == [
        ("EV-1", "12"),
        ("EV-2", "12"),
        ("EV-1", "11"),
        ("EV-3", "11"),
    ]


def test_published_readings_give_rows_for_each_pair() -> None:
    """Readings recorded as published become their pairs' rows; a pair with no
    readings has none."""
    published = PublishedReadings()
    published.add(SimReading("vehicle", "EV-00002", H12, 0.9, 1, ()))
    published.add(SimReading("meter", "MTR-00002", H12 + 1000, 1.0, 1, ()))
    published.add(SimReading("vehicle", "EV-00001", H12, 0.5, 1, ()))
    rows = published.rows([1, 2, 3])
    assert [(r["vehicle_id"], r["matched"], r["unmatched"]) for r in rows] == [("EV-00001", 0, 1), ("EV-00002", 1, 0)]
