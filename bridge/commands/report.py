"""``fleet-bridge report``: arguments, output formats, and the command.

The formatters are pure functions of the rows (so they are tested without a
database); the query lives in :mod:`bridge.analytics.report`, the picture in
:mod:`bridge.commands.plot`.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import orjson

from bridge import clock
from bridge.analytics.report import (
    EfficiencyRow,
    HourSummary,
    UnmappedVehicleError,
    fleet_report,
    hourly_summary,
    vehicle_report,
)
from bridge.commands.plot import PLOT_MISSING, plot_available, plot_problem, plot_report
from bridge.commands.ranges import add_range_arguments, resolve
from bridge.commands.table import aligned
from bridge.config import Settings
from bridge.db import connect
from bridge.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from bridge.ingest.parse import DEVICE_ID

__all__ = [
    "COLUMNS",
    "DECIMALS",
    "SUMMARY_COLUMNS",
    "add_report_arguments",
    "cmd_report",
    "format_csv",
    "format_json",
    "format_table",
    "rfc3339",
]

COLUMNS: Final = EfficiencyRow._fields
SUMMARY_COLUMNS: Final = HourSummary._fields
# CSV and JSON values are rounded to this many decimal places: more says nothing
# about a meter and shows binary noise (1.5524200000000001).
DECIMALS: Final = 6

Rows = Sequence[EfficiencyRow] | Sequence[HourSummary]


# --- arguments --------------------------------------------------------------------


def _vehicle_id(text: str) -> str:
    if DEVICE_ID.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid device id")
    return text


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vehicle", type=_vehicle_id, metavar="ID", help="one vehicle (default: every mapped one)")
    add_range_arguments(parser, required=True)
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output (default: table)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw efficiency and energy per hour")
    parser.add_argument("--live", action="store_true", help="compute every hour from the readings, not the roll-up")
    parser.add_argument("--summary", action="store_true", help="one row per hour over the selected vehicles")


# --- output -----------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # rows repeat their hour: a fleet-day has 24 of them in 240,000 rows
def rfc3339(moment: datetime) -> str:
    """``2026-11-27T13:00:00Z``: whole seconds in UTC, as the contract shows hours."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _value(value: object) -> object:
    """For CSV and JSON: hours in RFC 3339, kWh and efficiency rounded."""
    if isinstance(value, float):
        return round(value, DECIMALS)
    return rfc3339(value) if isinstance(value, datetime) else value


def _cell(value: object) -> str:
    """For the table: kWh and efficiency to 3 decimals, '-' if undefined."""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, datetime):
        return rfc3339(value)
    return "-" if value is None else str(value)


def format_json(rows: Rows) -> str:
    """One JSON array of objects with exactly the contract's keys."""
    records = [dict(zip(row._fields, map(_value, row), strict=True)) for row in rows]
    return orjson.dumps(records).decode()


def format_csv(rows: Rows, columns: Sequence[str] = COLUMNS) -> str:
    """A header row, then one line per row; an undefined efficiency is an empty field."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_value(value) for value in row] for row in rows)
    return out.getvalue()


def format_table(rows: Rows, columns: Sequence[str] = COLUMNS) -> str:
    """Aligned columns for a terminal: kWh and efficiency to 3 decimals, '-' if undefined."""
    cells = [[_cell(value) for value in row] for row in rows]
    text_columns = {columns.index(name) for name in ("vehicle_id", "hour") if name in columns}
    lines = aligned(columns, cells, numeric=set(range(len(columns))) - text_columns, rule=True)
    if not rows:
        lines.append("(no readings in the range)")
    return "\n".join(lines) + "\n"


# --- command ----------------------------------------------------------------------


async def _query(settings: Settings, args: argparse.Namespace, start: datetime, end: datetime) -> Rows:
    schema = settings.db.schema
    conn = await connect(settings)
    try:
        if args.summary:
            return await hourly_summary(conn, schema, start, end, vehicle_id=args.vehicle, live=args.live)
        if args.vehicle is None:
            return await fleet_report(conn, schema, start, end, live=args.live)
        return await vehicle_report(conn, schema, args.vehicle, start, end, live=args.live)
    finally:
        await conn.close()


def _usage_problem(args: argparse.Namespace, start: datetime, end: datetime) -> str | None:
    if start >= end:
        return "--from must be before --to (the range [from, to) is empty)"
    if args.plot is not None:
        return PLOT_MISSING if not plot_available() else plot_problem(args.plot)
    return None


async def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    """Print the report; exit 2 on a bad range or plot file, or a missing plot extra
    (all before any query), 1 for an unmapped vehicle."""
    now = clock.now()
    start, end = resolve(args.start, now), resolve(args.end, now)
    problem = _usage_problem(args, start, end)
    if problem is not None:
        print(f"fleet-bridge report: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        rows = await _query(settings, args, start, end)
    except UnmappedVehicleError as exc:
        print(f"fleet-bridge report: {exc} (load one with: fleet-bridge mapping import FILE.csv)", file=sys.stderr)
        return EXIT_FAILURE
    columns = SUMMARY_COLUMNS if args.summary else COLUMNS
    if args.format == "json":
        sys.stdout.write(format_json(rows) + "\n")
    else:
        sys.stdout.write((format_csv if args.format == "csv" else format_table)(rows, columns))
    if args.plot is not None:
        vehicles = {row.vehicle_id for row in rows if isinstance(row, EfficiencyRow)}
        who = args.vehicle or ("fleet" if args.summary else f"fleet ({len(vehicles)} vehicles)")
        plot_report(rows, args.plot, f"Charging efficiency, {who}, {rfc3339(start)} to {rfc3339(end)}")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_OK
