"""``fleet-bridge report``: arguments, output formats and the optional plot.

The formatters are pure functions of the rows (so they are tested without a
database); the query itself lives in :mod:`bridge.analytics.report`.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import orjson

from bridge.analytics.report import EfficiencyRow, UnmappedVehicleError, fleet_report, vehicle_report
from bridge.config import Settings
from bridge.db import connect
from bridge.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from bridge.ingest.parse import DEVICE_ID

__all__ = [
    "COLUMNS",
    "PLOT_MISSING",
    "add_report_arguments",
    "cmd_report",
    "format_csv",
    "format_json",
    "format_table",
    "hourly_totals",
    "parse_time",
    "plot_report",
    "rfc3339",
]

COLUMNS: Final = ("vehicle_id", "hour", "total_dc_kwh", "total_ac_kwh", "efficiency", "matched", "unmatched")
PLOT_MISSING: Final = "--plot needs matplotlib: pip install 'fleet-telemetry-bridge[plot]'"
DATE_ONLY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
# RFC 3339 with a mandatory offset: a time without one is ambiguous, so refused.
DATE_TIME: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)


# --- arguments --------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """An aware UTC datetime from RFC 3339 (``Z`` or an offset) or a date (UTC midnight)."""
    text = text.strip()
    match = DATE_TIME.fullmatch(text)
    if DATE_ONLY.fullmatch(text) is None and match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time or a YYYY-MM-DD date")
    if match is not None and match["offset"] is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (ambiguous): add Z or e.g. +01:00")
    try:
        parsed = datetime.fromisoformat(text.upper())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _vehicle_id(text: str) -> str:
    if DEVICE_ID.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid device id")
    return text


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vehicle", type=_vehicle_id, metavar="ID", help="one vehicle (default: every mapped one)")
    parser.add_argument("--from", dest="start", type=parse_time, required=True, metavar="T",
                        help="inclusive: RFC 3339 with Z or an offset, or YYYY-MM-DD (UTC midnight)")  # fmt: skip
    parser.add_argument("--to", dest="end", type=parse_time, required=True, metavar="T",
                        help="end, exclusive; same forms as --from")  # fmt: skip
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output (default: table)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw efficiency and energy per hour")


# --- output -----------------------------------------------------------------------


def rfc3339(moment: datetime) -> str:
    """``2026-11-27T13:00:00Z``: whole seconds in UTC, as the contract shows hours."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(row: EfficiencyRow) -> dict[str, Any]:
    return {
        "vehicle_id": row.vehicle_id,
        "hour": rfc3339(row.hour),
        "total_dc_kwh": row.total_dc_kwh,
        "total_ac_kwh": row.total_ac_kwh,
        "efficiency": row.efficiency,
        "matched": row.matched,
        "unmatched": row.unmatched,
    }


def format_json(rows: Sequence[EfficiencyRow]) -> str:
    """One JSON array of objects with exactly the contract's keys."""
    return orjson.dumps([_record(row) for row in rows]).decode()


def format_csv(rows: Sequence[EfficiencyRow]) -> str:
    """A header row, then one line per row; an undefined efficiency is an empty field."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(_record(row) for row in rows)
    return out.getvalue()


def format_table(rows: Sequence[EfficiencyRow]) -> str:
    """Aligned columns for a terminal: kWh to 3 decimals, efficiency to 3, '-' if undefined."""
    cells = [
        [
            row.vehicle_id,
            rfc3339(row.hour),
            f"{row.total_dc_kwh:.3f}",
            f"{row.total_ac_kwh:.3f}",
            "-" if row.efficiency is None else f"{row.efficiency:.3f}",
            str(row.matched),
            str(row.unmatched),
        ]
        for row in rows
    ]
    widths = [max([len(name), *(len(line[i]) for line in cells)]) for i, name in enumerate(COLUMNS)]
    left = {0, 1}  # ids and times read left to right; numbers line up on the right

    def render(line: Sequence[str]) -> str:
        return "  ".join(
            v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths, strict=True))
        )

    lines = [render(COLUMNS), render(["-" * w for w in widths]), *(render(line) for line in cells)]
    if not rows:
        lines.append("(no readings in the range)")
    return "\n".join(lines) + "\n"


# --- plot -------------------------------------------------------------------------


def hourly_totals(rows: Sequence[EfficiencyRow]) -> list[tuple[datetime, float, float, float | None]]:
    """(hour, dc, ac, efficiency) summed over the vehicles, oldest hour first: one
    readable series whether the report is for one vehicle or ten thousand."""
    totals: dict[datetime, tuple[float, float]] = {}
    for row in rows:
        dc, ac = totals.get(row.hour, (0.0, 0.0))
        totals[row.hour] = (dc + row.total_dc_kwh, ac + row.total_ac_kwh)
    return [(hour, dc, ac, dc / ac if ac else None) for hour, (dc, ac) in sorted(totals.items())]


def plot_report(rows: Sequence[EfficiencyRow], path: Path, title: str) -> None:
    """Efficiency (top) and DC/AC energy (bottom) per hour, to a PNG.

    matplotlib is an optional extra: ImportError reaches the caller, which says how
    to install it. The Agg backend needs no display (servers, CI)."""
    import matplotlib  # optional dependency, loaded only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = hourly_totals(rows)
    # Each value covers [hour, hour + 1 h): draw it at the middle of that hour.
    middles = [hour + timedelta(minutes=30) for hour, *_ in series]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6), height_ratios=(1, 1.3))
    try:
        efficiency = [eff if eff is not None else float("nan") for *_, eff in series]  # NaN: a gap in the line
        top.plot(middles, efficiency, marker="o", color="tab:green")
        top.set_ylabel("efficiency (DC / AC)")
        top.set_title(title)
        top.grid(alpha=0.3)
        width = timedelta(minutes=24)  # two bars side by side within each hour
        bottom.bar([m - width / 2 for m in middles], [dc for _, dc, _, _ in series], width,
                   label="DC delivered", color="tab:blue")  # fmt: skip
        bottom.bar([m + width / 2 for m in middles], [ac for _, _, ac, _ in series], width,
                   label="AC consumed", color="tab:orange")  # fmt: skip
        bottom.margins(y=0.2)  # headroom for the legend above the bars
        bottom.set_ylabel("energy per hour (kWh)")
        bottom.set_xlabel("hour (UTC)")
        bottom.legend(loc="upper right", ncols=2)
        bottom.grid(alpha=0.3, axis="y")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


# --- command ----------------------------------------------------------------------


def _plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


async def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    """Print the report; exit 2 on a bad range or a missing plot extra, 1 for an unmapped vehicle."""
    if args.start >= args.end:
        print("fleet-bridge report: --from must be before --to (the range [from, to) is empty)", file=sys.stderr)
        return EXIT_USAGE
    if args.plot is not None and not _plot_available():
        print(f"fleet-bridge report: {PLOT_MISSING}", file=sys.stderr)
        return EXIT_USAGE
    conn = await connect(settings)
    try:
        if args.vehicle is None:
            rows = await fleet_report(conn, settings.db.schema, args.start, args.end)
        else:
            rows = await vehicle_report(conn, settings.db.schema, args.vehicle, args.start, args.end)
    except UnmappedVehicleError as exc:
        print(f"fleet-bridge report: {exc} (load one with: fleet-bridge mapping import FILE.csv)", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        await conn.close()
    formatter = {"table": format_table, "csv": format_csv, "json": format_json}[args.format]
    sys.stdout.write(formatter(rows) + ("\n" if args.format == "json" else ""))
    if args.plot is not None:
        who = args.vehicle or f"fleet ({len({row.vehicle_id for row in rows})} vehicles)"
        plot_report(rows, args.plot, f"Charging efficiency, {who}, {rfc3339(args.start)} to {rfc3339(args.end)}")
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_OK
