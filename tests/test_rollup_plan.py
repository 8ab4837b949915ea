"""Planning a roll-up pass (bridge/analytics/rollup.py): which hours, for whom (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from bridge.analytics.pairing import floor_hour
from bridge.analytics.rollup import HourWork, Invalidation, hours_between, plan_work

pytestmark = pytest.mark.unit

H10 = datetime(2026, 11, 27, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_plan_recomputes_named_vehicles_of_rolled_up_hours_and_every_vehicle_of_new_ones() -> None:
    """An hour already rolled up is recomputed for the vehicles and meters named; an
    hour not rolled up (or requested, or invalidated for every vehicle) for every
    vehicle; a mapping change adds its vehicles to every rolled-up hour; hours before
    keep_from are dropped."""
    h = [H10 + n * HOUR for n in range(4)]
    invalidations = [
        Invalidation((h[0], h[2]), frozenset({"EV-1"}), frozenset({"MTR-9"})),
        Invalidation(None, frozenset({"EV-7"}), frozenset()),
        Invalidation((h[0] - 48 * HOUR, h[0] - 47 * HOUR), frozenset({"EV-2"}), frozenset()),
        Invalidation((h[3] + HOUR, h[3] + 2 * HOUR), frozenset(), frozenset(), every_vehicle=True),
    ]
    work = plan_work(invalidations, {h[0], h[3]}, requested=[h[2]], keep_from=h[0] - HOUR)
    assert work == [
        HourWork(h[0], everyone=False, vehicles={"EV-1", "EV-7"}, meters={"MTR-9"}),
        HourWork(h[1], everyone=True, vehicles={"EV-1"}, meters={"MTR-9"}),
        HourWork(h[2], everyone=True),
        HourWork(h[3], everyone=False, vehicles={"EV-7"}),
        HourWork(h[3] + HOUR, everyone=True),
    ]


def test_hours_are_those_a_range_overlaps() -> None:
    """A range is taken hour by hour, a partial hour at either end included."""
    assert hours_between(H10 + timedelta(minutes=30), H10 + 2 * HOUR) == [H10, H10 + HOUR]
    assert hours_between(H10, H10 + HOUR + timedelta(microseconds=1)) == [H10, H10 + HOUR]
    assert hours_between(H10, H10) == []
    assert floor_hour(datetime(2026, 11, 27, 11, 59, 59, tzinfo=timezone(timedelta(hours=1)))) == H10
