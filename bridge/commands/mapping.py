"""``fleet-bridge mapping import FILE.csv``: load which meter feeds which vehicle.

The file is checked as a whole before anything is written: a mapping that is
half imported would make the report pair some vehicles with stale meters, so
one bad row means nothing is imported and every bad row is reported by line.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from bridge import clock
from bridge.analytics.invalidation import invalidate_vehicles
from bridge.config import Settings
from bridge.db import Conn, connect, qualified
from bridge.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, BridgeError
from bridge.ingest.parse import DEVICE_ID

__all__ = [
    "HEADER",
    "ImportResult",
    "MappingFileError",
    "add_import_arguments",
    "cmd_mapping_import",
    "parse_mapping",
    "upsert_mapping",
]

HEADER: Final = ("vehicle_id", "meter_id")


class MappingFileError(BridgeError):
    """The file cannot be imported; ``problems`` holds one ``line N: ...`` text each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s): " + "; ".join(problems))
        self.problems = problems


def _row_problems(fields: list[str], seen: dict[str, int]) -> list[str]:
    if len(fields) != len(HEADER):
        return [f"expected 2 fields (vehicle_id,meter_id), got {len(fields)}"]
    problems = [
        f"{name} {value!r} is not a valid device id"
        for name, value in zip(HEADER, fields, strict=True)
        if DEVICE_ID.fullmatch(value) is None
    ]
    if fields[0] in seen:
        problems.append(f"vehicle_id {fields[0]!r} is already mapped on line {seen[fields[0]]}")
    return problems


def parse_mapping(lines: Iterable[str]) -> list[tuple[str, str]]:
    """The ``(vehicle_id, meter_id)`` pairs of a mapping CSV, or :class:`MappingFileError`
    listing every bad line. Blank lines are skipped; fields are trimmed; a vehicle may
    appear once (the file is a mapping, so two meters for one vehicle is a mistake)."""
    pairs: list[tuple[str, str]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    reader = csv.reader(lines)
    header = [field.strip().lstrip("\ufeff") for field in next(reader, [])]
    if tuple(header) != HEADER:
        raise MappingFileError([f"line 1: the header must be 'vehicle_id,meter_id', got {','.join(header)!r}"])
    for fields in reader:
        fields = [field.strip() for field in fields]
        if not any(fields):
            continue
        row_problems = _row_problems(fields, seen)
        problems += [f"line {reader.line_num}: {problem}" for problem in row_problems]
        if not row_problems:
            seen[fields[0]] = reader.line_num
            pairs.append((fields[0], fields[1]))
    if problems:
        raise MappingFileError(problems)
    return pairs


@dataclasses.dataclass(frozen=True)
class ImportResult:
    added: int
    changed: int
    unchanged: int


async def upsert_mapping(conn: Conn, schema: str, pairs: list[tuple[str, str]]) -> ImportResult:
    """Insert new vehicles and repoint changed ones, in one transaction that also
    invalidates every rolled-up hour of the vehicles it adds or changes."""
    table = qualified(schema, "vehicle_meter_mapping")
    async with conn.transaction():
        written = await conn.fetch(
            f"INSERT INTO {table} AS t (vehicle_id, meter_id, updated_at)"
            " SELECT v, m, $3 FROM unnest($1::text[], $2::text[]) AS u(v, m)"
            " ON CONFLICT (vehicle_id) DO UPDATE SET meter_id = excluded.meter_id, updated_at = excluded.updated_at"
            " WHERE t.meter_id IS DISTINCT FROM excluded.meter_id"
            " RETURNING vehicle_id, (xmax = 0) AS inserted",  # xmax is 0 only on a freshly inserted row
            [vehicle for vehicle, _ in pairs],
            [meter for _, meter in pairs],
            clock.now(),
        )
        await invalidate_vehicles(conn, schema, [row["vehicle_id"] for row in written])
    added = sum(1 for row in written if row["inserted"])
    return ImportResult(added=added, changed=len(written) - added, unchanged=len(pairs) - len(written))


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE.csv", help="CSV with the header vehicle_id,meter_id")


async def cmd_mapping_import(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when imported; 1 (nothing imported) when any row is bad; 2 when unreadable."""
    path: Path = args.file
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            pairs = parse_mapping(handle)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"fleet-bridge mapping import: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MappingFileError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        print(
            f"fleet-bridge mapping import: {len(exc.problems)} problem(s) in {path}; nothing imported", file=sys.stderr
        )
        return EXIT_FAILURE
    conn = await connect(settings)
    try:
        result = await upsert_mapping(conn, settings.db.schema, pairs)
    finally:
        await conn.close()
    print(
        f"imported {len(pairs)} mapping row(s) from {path}: "
        f"{result.added} added, {result.changed} changed, {result.unchanged} unchanged"
    )
    return EXIT_OK
