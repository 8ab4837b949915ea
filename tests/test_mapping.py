"""``fleet-bridge mapping import``: the CSV rules (pure) and the upsert (PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from bridge.commands.cli import main
from bridge.commands.mapping import MappingFileError, parse_mapping


@pytest.mark.unit
def test_good_file_gives_trimmed_pairs_and_skips_blank_lines() -> None:
    """Header first (a UTF-8 BOM from spreadsheets is tolerated), fields trimmed,
    blank lines ignored, order kept."""
    lines = ["\ufeffvehicle_id, meter_id\n", "EV-00001,MTR-00001\n", "\n", " EV-00002 , MTR-00002\n"]
    assert parse_mapping(lines) == [("EV-00001", "MTR-00001"), ("EV-00002", "MTR-00002")]


@pytest.mark.unit
def test_every_bad_row_is_reported_by_line_number() -> None:
    """All problems are collected, each with its line (blank lines still count), so
    a file is fixed in one pass."""
    lines = [
        "vehicle_id,meter_id",  # 1
        "EV-1,MTR-1",  # 2
        "",  # 3
        "EV 2,MTR-2",  # 4: space not allowed
        "EV-3,MTR-3,extra",  # 5
        "EV-4",  # 6
        "EV-1,MTR-9",  # 7: EV-1 again
        "EV-5,-MTR",  # 8: must start with a letter or digit
    ]
    with pytest.raises(MappingFileError) as raised:
        parse_mapping(lines)
    assert raised.value.problems == [
        "line 4: vehicle_id 'EV 2' is not a valid device id",
        "line 5: expected 2 fields (vehicle_id,meter_id), got 3",
        "line 6: expected 2 fields (vehicle_id,meter_id), got 1",
        "line 7: vehicle_id 'EV-1' is already mapped on line 2",
        "line 8: meter_id '-MTR' is not a valid device id",
    ]


@pytest.mark.unit
@pytest.mark.parametrize("lines", [[], ["EV-1,MTR-1"], ["meter_id,vehicle_id", "MTR-1,EV-1"]])
def test_the_header_is_required(lines: list[str]) -> None:
    """An empty file, a file starting with data, or swapped columns: refused at line 1
    (swapped columns would silently map meters as vehicles)."""
    with pytest.raises(MappingFileError, match="line 1: the header must be 'vehicle_id,meter_id'"):
        parse_mapping(lines)


# --- the command against PostgreSQL -----------------------------------------------


@pytest.fixture
def cli_env(pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_BRIDGE_DB_DSN", pg_dsn)
    monkeypatch.setenv("FLEET_BRIDGE_DB_SCHEMA", schema)
    monkeypatch.setenv("FLEET_BRIDGE_LOG_FORMAT", "json")


async def mappings(db: asyncpg.Connection, schema: str) -> dict[str, str]:
    rows = await db.fetch(f'SELECT vehicle_id, meter_id FROM "{schema}".vehicle_meter_mapping')
    return {r["vehicle_id"]: r["meter_id"] for r in rows}


@pytest.mark.integration
@pytest.mark.usefixtures("cli_env")
async def test_import_upserts_and_reports_what_changed(
    db: asyncpg.Connection, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second import adds new vehicles, repoints changed ones, leaves the rest, and
    says how many of each."""
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("vehicle_id,meter_id\nEV-1,MTR-1\nEV-2,MTR-2\n")
    second.write_text("vehicle_id,meter_id\nEV-1,MTR-1\nEV-2,MTR-7\nEV-3,MTR-3\n")

    assert await asyncio.to_thread(main, ["mapping", "import", str(first)]) == 0
    assert await asyncio.to_thread(main, ["mapping", "import", str(second)]) == 0

    assert await mappings(db, schema) == {"EV-1": "MTR-1", "EV-2": "MTR-7", "EV-3": "MTR-3"}
    assert capsys.readouterr().out.splitlines()[-1].endswith("1 added, 1 changed, 1 unchanged")


@pytest.mark.integration
@pytest.mark.usefixtures("cli_env")
async def test_bad_rows_are_listed_and_nothing_is_imported(
    db: asyncpg.Connection, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One bad row: exit 1, each bad row on stderr as FILE: line N: ..., then a
    summary; the good rows of that file are not imported either."""
    path = tmp_path / "map.csv"
    path.write_text("vehicle_id,meter_id\nEV-1,MTR-1\nEV/2,MTR-2\nEV-3\n")

    assert await asyncio.to_thread(main, ["mapping", "import", str(path)]) == 1

    assert await mappings(db, schema) == {}
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: line 3: vehicle_id 'EV/2' is not a valid device id",
        f"{path}: line 4: expected 2 fields (vehicle_id,meter_id), got 1",
        f"fleet-bridge mapping import: 2 problem(s) in {path}; nothing imported",
    ]


@pytest.mark.integration
@pytest.mark.usefixtures("cli_env")
async def test_missing_header_or_file_imports_nothing(
    db: asyncpg.Connection, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No header: exit 1 naming line 1. A file that cannot be read: exit 2 (the
    argument is wrong), one line."""
    path = tmp_path / "map.csv"
    path.write_text("EV-1,MTR-1\n")

    assert await asyncio.to_thread(main, ["mapping", "import", str(path)]) == 1
    assert "line 1: the header must be 'vehicle_id,meter_id'" in capsys.readouterr().err

    assert await asyncio.to_thread(main, ["mapping", "import", str(tmp_path / "absent.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("fleet-bridge mapping import: cannot read")
    assert await mappings(db, schema) == {}
