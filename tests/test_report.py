"""The efficiency report's query (bridge/analytics/report.py) against PostgreSQL: hand-built
readings with known answers, and the plan it gets (pruning, key indexes)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest

from bridge.analytics.pairing import range_args
from bridge.analytics.report import (
    EfficiencyRow,
    UnmappedVehicleError,
    fleet_report,
    hour_pieces,
    report_sql,
    vehicle_report,
)
from bridge.schema.partitions import ensure_partitions

pytestmark = [pytest.mark.integration, pytest.mark.clock]

DAY = date(2026, 11, 27)
T0 = datetime(2026, 11, 27, tzinfo=UTC)  # midnight starting DAY
S = timedelta(seconds=1)


def at(hh: int, mm: int = 0, ss: float = 0.0, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC) + timedelta(seconds=ss)


async def add_partitions(db: asyncpg.Connection, schema: str, days: Iterable[date]) -> None:
    days = list(days)
    for table in ("meter_telemetry_history", "vehicle_telemetry_history"):
        await ensure_partitions(db, schema, table, days)


async def insert(
    db: asyncpg.Connection, schema: str, stream: str, device: str, readings: list[tuple[datetime, float]]
) -> None:
    """Readings of one device, straight into its history table (creating the days' partitions)."""
    await add_partitions(db, schema, {ts.date() for ts, _ in readings})
    energy = "kwh_consumed_ac" if stream == "meter" else "kwh_delivered_dc"
    await db.executemany(
        f'INSERT INTO "{schema}".{stream}_telemetry_history ({stream}_id, recorded_at, received_at, {energy})'
        " VALUES ($1, $2, $2, $3)",
        [(device, ts, kwh) for ts, kwh in readings],
    )


async def mapping(db: asyncpg.Connection, schema: str, pairs: dict[str, str]) -> None:
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)', list(pairs.items())
    )


def row(vehicle: str, hour: datetime, dc: float, ac: float, matched: int, unmatched: int = 0) -> EfficiencyRow:
    return EfficiencyRow(vehicle, hour, dc, ac, dc / ac if ac else None, matched, unmatched)


# --- pairing ----------------------------------------------------------------------


async def test_nearest_meter_reading_wins_and_a_tie_goes_to_the_earlier(db: asyncpg.Connection, schema: str) -> None:
    """Two meter readings in one window: the nearer is paired (not both, as the
    seed's join did); at equal distance the earlier one is paired."""
    await mapping(db, schema, {"EV-1": "MTR-1"})
    await insert(db, schema, "meter", "MTR-1", [
        (at(12, 0, -3), 4.0), (at(12, 0, 2), 0.5),  # 3 s before, 2 s after: the later is nearer
        (at(12, 1, -2), 0.25), (at(12, 1, 2), 8.0),  # 2 s either side: the earlier wins the tie
    ])  # fmt: skip
    await insert(db, schema, "vehicle", "EV-1", [(at(12, 0), 0.375), (at(12, 1), 0.125)])

    rows = await vehicle_report(db, schema, "EV-1", T0, T0 + timedelta(days=1))

    assert rows == [row("EV-1", at(12), 0.5, 0.75, matched=2)]


async def test_only_the_mapped_meter_is_paired(db: asyncpg.Connection, schema: str) -> None:
    """A nearer reading of some other meter is ignored: pairing follows the mapping."""
    await mapping(db, schema, {"EV-1": "MTR-1", "EV-2": "MTR-2"})
    await insert(db, schema, "meter", "MTR-1", [(at(12, 0, 4), 1.0)])
    await insert(db, schema, "meter", "MTR-2", [(at(12, 0, 0), 64.0)])
    await insert(db, schema, "vehicle", "EV-1", [(at(12), 0.5)])

    rows = await vehicle_report(db, schema, "EV-1", T0, T0 + timedelta(days=1))

    assert rows == [row("EV-1", at(12), 0.5, 1.0, matched=1)]


async def test_five_seconds_exactly_is_inside_and_one_millisecond_more_is_outside(
    db: asyncpg.Connection, schema: str
) -> None:
    """|meter - vehicle| = 5.000 s pairs (either side); 5.001 s does not, and the
    unpaired vehicle reading is counted as unmatched, in neither sum."""
    await mapping(db, schema, {"EV-1": "MTR-1"})
    await insert(db, schema, "meter", "MTR-1", [
        (at(13, 0, 5.0), 1.0), (at(13, 10, -5.0), 2.0),  # inside
        (at(13, 20, 5.001), 64.0), (at(13, 30, -5.001), 128.0),  # outside
    ])  # fmt: skip
    await insert(db, schema, "vehicle", "EV-1", [(at(13, m), 0.5) for m in (0, 10, 20, 30)])

    rows = await vehicle_report(db, schema, "EV-1", T0, T0 + timedelta(days=1))

    assert rows == [row("EV-1", at(13), 1.0, 3.0, matched=2, unmatched=2)]


async def test_zero_ac_or_no_match_gives_a_null_efficiency(db: asyncpg.Connection, schema: str) -> None:
    """An hour whose paired AC sums to 0 and an hour with nothing paired both report
    efficiency None (not a division error, not 0), with their counts."""
    await mapping(db, schema, {"EV-1": "MTR-1"})
    await insert(db, schema, "meter", "MTR-1", [(at(9, 0, 1), 0.0), (at(9, 1, 1), 0.0)])
    await insert(db, schema, "vehicle", "EV-1", [(at(9, 0), 0.5), (at(9, 1), 0.25), (at(10, 0), 1.0)])

    rows = await vehicle_report(db, schema, "EV-1", T0, T0 + timedelta(days=1))

    assert rows == [
        EfficiencyRow("EV-1", at(10), 0.0, 0.0, None, matched=0, unmatched=1),
        EfficiencyRow("EV-1", at(9), 0.75, 0.0, None, matched=2, unmatched=0),
    ]


async def test_pairs_straddle_midnight_across_day_partitions(db: asyncpg.Connection, schema: str) -> None:
    """Vehicle at 23:59:58 pairs with the meter at 00:00:02 next day (another
    partition), and vehicle at 00:00:01 with the meter at 23:59:57 the day before;
    each counts in its vehicle reading's hour, inside the day asked for."""
    before, after = DAY - timedelta(days=1), DAY + timedelta(days=1)
    await mapping(db, schema, {"EV-1": "MTR-1"})
    await insert(db, schema, "meter", "MTR-1", [(at(23, 59, 57, before), 4.0), (at(0, 0, 2, after), 2.0)])
    await insert(db, schema, "vehicle", "EV-1", [(at(0, 0, 1), 3.0), (at(23, 59, 58), 1.0)])

    rows = await vehicle_report(db, schema, "EV-1", T0, T0 + timedelta(days=1))

    assert rows == [row("EV-1", at(23), 1.0, 2.0, matched=1), row("EV-1", at(0), 3.0, 4.0, matched=1)]


async def test_hours_and_days_split_at_their_boundaries_and_the_range_is_half_open(
    db: asyncpg.Connection, schema: str
) -> None:
    """Readings either side of an hour and of midnight land in their own hours, newest
    first; a reading exactly at `from` is in the report, one exactly at `to` is not."""
    next_day = DAY + timedelta(days=1)
    times = [at(13, 59, 59), at(14), at(23, 59, 30), at(0, 0, 30, next_day), at(1, day=next_day)]
    await mapping(db, schema, {"EV-1": "MTR-1"})
    await insert(db, schema, "meter", "MTR-1", [(ts + S, 1.0) for ts in times])
    await insert(db, schema, "vehicle", "EV-1", [(ts, 0.5) for ts in times])

    rows = await vehicle_report(db, schema, "EV-1", at(13, 59, 59), at(1, day=next_day))

    assert [(r.hour, r.matched) for r in rows] == [(at(0, day=next_day), 1), (at(23), 1), (at(14), 1), (at(13), 1)]


async def test_fleet_report_covers_mapped_vehicles_only_ordered_by_hour_then_vehicle(
    db: asyncpg.Connection, schema: str
) -> None:
    """The fleet report has every mapped vehicle's hours (newest first, then by id);
    a vehicle with readings but no mapping is absent."""
    await mapping(db, schema, {"EV-2": "MTR-2", "EV-1": "MTR-1"})
    for n in (1, 2, 3):
        await insert(db, schema, "meter", f"MTR-{n}", [(at(h, 0, 1), 1.0) for h in (5, 6)])
        await insert(db, schema, "vehicle", f"EV-{n}", [(at(h), 0.5) for h in (5, 6)])

    rows = await fleet_report(db, schema, T0, T0 + timedelta(days=1))

    assert [(r.hour, r.vehicle_id) for r in rows] == [
        (at(6), "EV-1"),
        (at(6), "EV-2"),
        (at(5), "EV-1"),
        (at(5), "EV-2"),
    ]
    assert all(r.efficiency == 0.5 and r.matched == 1 for r in rows)


async def test_one_unmapped_vehicle_is_an_error_not_an_empty_report(db: asyncpg.Connection, schema: str) -> None:
    """Asking for a vehicle without a mapping raises UnmappedVehicleError naming it,
    while a mapped vehicle without readings in the range is simply an empty list."""
    await mapping(db, schema, {"EV-1": "MTR-1"})
    await insert(db, schema, "vehicle", "EV-9", [(at(12), 0.5)])

    with pytest.raises(UnmappedVehicleError, match="EV-9"):
        await vehicle_report(db, schema, "EV-9", T0, T0 + timedelta(days=1))
    assert await vehicle_report(db, schema, "EV-1", T0, T0 + timedelta(days=1)) == []


async def test_naive_or_reversed_ranges_are_refused(db: asyncpg.Connection, schema: str) -> None:
    """A naive datetime is ambiguous and a range whose end precedes its start is a
    mistake: both raise ValueError instead of silently returning nothing."""
    with pytest.raises(ValueError, match="timezone-aware"):
        await fleet_report(db, schema, datetime(2026, 11, 27), T0)
    with pytest.raises(ValueError, match="after"):
        await fleet_report(db, schema, T0, T0 - S)


# --- plan -------------------------------------------------------------------------

PLAN_DAYS = [DAY + timedelta(days=n) for n in range(-2, 3)]  # 5 daily partitions, DAY in the middle


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def scans_of(nodes: list[dict[str, Any]], table: str) -> dict[str, dict[str, Any]]:
    """The scan nodes on ``table``'s partitions, by partition name."""
    return {n["Relation Name"]: n for n in nodes if n.get("Relation Name", "").startswith(f"{table}_p")}


def removed(nodes: list[dict[str, Any]], table: str) -> int:
    """'Subplans Removed' of the Append over ``table``'s partitions (pruned at executor start)."""
    for node in nodes:
        if node["Node Type"] == "Append" and scans_of(node.get("Plans", []), table):
            return int(node.get("Subplans Removed", 0))
    return 0


@pytest.fixture
async def five_days(db: asyncpg.Connection, schema: str) -> None:
    """50 vehicle/meter pairs, one reading every 10 minutes for 5 days, vacuumed and
    analyzed (as autovacuum leaves an append-only table): enough rows that the
    planner's choices are the ones it makes on real data."""
    await add_partitions(db, schema, PLAN_DAYS)
    start, end = T0 - timedelta(days=2), T0 + timedelta(days=3)
    await db.execute(
        f"""
        INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id)
            SELECT 'EV-' || i, 'MTR-' || i FROM generate_series(1, 50) i;
        INSERT INTO "{schema}".meter_telemetry_history (meter_id, recorded_at, received_at, kwh_consumed_ac)
            SELECT 'MTR-' || i, t, t, 1.0 FROM generate_series(1, 50) i,
                   generate_series('{start.isoformat()}'::timestamptz, '{end.isoformat()}', '10 min') t
            WHERE t < '{end.isoformat()}';
        INSERT INTO "{schema}".vehicle_telemetry_history (vehicle_id, recorded_at, received_at, kwh_delivered_dc)
            SELECT 'EV-' || i, t + interval '2 s', t, 0.9 FROM generate_series(1, 50) i,
                   generate_series('{start.isoformat()}'::timestamptz, '{end.isoformat()}', '10 min') t
            WHERE t < '{end.isoformat()}';
        """
    )
    for table in ("vehicle_meter_mapping", "meter_telemetry_history", "vehicle_telemetry_history"):
        await db.execute(f'VACUUM ANALYZE "{schema}".{table}')


def sql_literal(value: object) -> str:
    """A parameter value written into EXECUTE (times, an id, NULL, arrays of times)."""
    if value is None:
        return "NULL"
    if isinstance(value, list):
        return "'{" + ",".join(f'"{item.isoformat()}"' for item in value) + "}'"
    return f"'{value.isoformat() if isinstance(value, datetime) else value}'"


async def explain(db: asyncpg.Connection, schema: str, mode: str, vehicle: str | None) -> list[dict[str, Any]]:
    """The plan the server makes for the report over DAY, as EXPLAIN shows it.

    A PREPAREd statement, so that ``plan_cache_mode`` decides between the plan made
    with the range's values (custom: pruned while planning) and the one made for any
    values (generic: pruned when the executor starts, shown as "Subplans Removed").
    A client's cached statement gets the first kind, then may switch to the second.
    """
    pieces = hour_pieces(T0, T0 + timedelta(days=1))
    values = [*range_args(T0, T0 + timedelta(days=1)), vehicle, [], [lo for lo, _ in pieces], [hi for _, hi in pieces]]
    types = "timestamptz, timestamptz, timestamptz, timestamptz, text, timestamptz[], timestamptz[], timestamptz[]"
    literals = ", ".join(sql_literal(value) for value in values)
    sql = report_sql(schema)
    await db.execute(f"SET plan_cache_mode = {mode}")
    await db.execute(f"PREPARE report_plan ({types}) AS {sql}")
    try:
        plan = await db.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE report_plan ({literals})")
    finally:
        await db.execute("DEALLOCATE report_plan")
        await db.execute("RESET plan_cache_mode")
    return list(plan_nodes(orjson.loads(plan)[0]["Plan"]))


METER_PARTS = {f"meter_telemetry_history_p{day:%Y%m%d}" for day in PLAN_DAYS[1:4]}
VEHICLE_PARTS = {f"vehicle_telemetry_history_p{DAY:%Y%m%d}"}


@pytest.mark.usefixtures("five_days")
@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
async def test_one_vehicle_day_reads_only_its_partitions_through_the_key_indexes(
    db: asyncpg.Connection, schema: str, mode: str
) -> None:
    """One vehicle over one day, with 5 daily partitions per table: the vehicle side
    scans only that day's partition, the meter side only that day and its two
    neighbours (the ±5 s window reaches 23:59:55 before and 00:00:05 after), and
    every scan is an index-only scan of the partition's (device_id, recorded_at) key.
    The generic plan shows the same partitions, the others reported as removed."""
    nodes = await explain(db, schema, mode, "EV-7")

    meter, vehicle = scans_of(nodes, "meter_telemetry_history"), scans_of(nodes, "vehicle_telemetry_history")
    assert set(vehicle) == VEHICLE_PARTS
    assert set(meter) == METER_PARTS
    for name, node in {**meter, **vehicle}.items():
        assert (node["Node Type"], node["Index Name"]) == ("Index Only Scan", f"{name}_pkey")
    if mode == "force_generic_plan":
        assert removed(nodes, "vehicle_telemetry_history") == 4
        assert removed(nodes, "meter_telemetry_history") == 2


@pytest.mark.usefixtures("five_days")
@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
async def test_fleet_day_reads_only_its_partitions_and_probes_the_meter_key_index(
    db: asyncpg.Connection, schema: str, mode: str
) -> None:
    """The whole fleet over one day prunes the same way; each vehicle reading probes
    the meter key index (index-only). The vehicle side reads most of its one
    partition, so how it does (index or sequential scan) is the planner's call."""
    nodes = await explain(db, schema, mode, None)

    meter, vehicle = scans_of(nodes, "meter_telemetry_history"), scans_of(nodes, "vehicle_telemetry_history")
    assert set(vehicle) == VEHICLE_PARTS
    assert set(meter) == METER_PARTS
    for name, node in meter.items():
        assert (node["Node Type"], node["Index Name"]) == ("Index Only Scan", f"{name}_pkey")
