"""``fleet-bridge report``: time arguments, the three output formats, the plot, and
the command end to end against PostgreSQL."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import pytest

from bridge import clock
from bridge.analytics.report import EfficiencyRow, HourSummary
from bridge.commands.cli import main
from bridge.commands.ranges import moment_arg
from bridge.commands.report import COLUMNS, SUMMARY_COLUMNS, format_csv, format_json, format_table
from bridge.schema.partitions import ensure_partitions

pytestmark = pytest.mark.clock

RunCli = Callable[..., Awaitable[tuple[int, str, str]]]
H13 = datetime(2026, 11, 27, 13, tzinfo=UTC)
ROWS = [
    EfficiencyRow("EV-00002", H13, 2.25, 2.5, 0.9, 5, 1),
    EfficiencyRow("EV-00010", H13, 0.0, 0.0, None, 0, 3),
    EfficiencyRow("EV-00002", H13 - timedelta(hours=1), 1.0, 1.25, 0.8, 4, 0),
]
EXPECTED_JSON = [
    {"vehicle_id": "EV-00002", "hour": "2026-11-27T13:00:00Z", "total_dc_kwh": 2.25, "total_ac_kwh": 2.5,
     "efficiency": 0.9, "matched": 5, "unmatched": 1},
    {"vehicle_id": "EV-00010", "hour": "2026-11-27T13:00:00Z", "total_dc_kwh": 0.0, "total_ac_kwh": 0.0,
     "efficiency": None, "matched": 0, "unmatched": 3},
    {"vehicle_id": "EV-00002", "hour": "2026-11-27T12:00:00Z", "total_dc_kwh": 1.0, "total_ac_kwh": 1.25,
     "efficiency": 0.8, "matched": 4, "unmatched": 0},
]  # fmt: skip


# --- pure -------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
        ("2026-11-27T13:00:00Z", H13),
        ("2026-11-27t13:00:00z", H13),
        ("2026-11-27T14:30:00.5+01:30", H13 + timedelta(microseconds=500_000)),
        ("2026-11-27 13:00Z", H13),
    ],
)
def test_times_are_rfc3339_or_dates_and_come_back_in_utc(text: str, expected: datetime) -> None:
    """RFC 3339 with Z or an offset, and a plain date meaning UTC midnight, all parse
    to the same instant in UTC."""
    parsed = moment_arg(text)
    assert parsed == expected
    assert isinstance(parsed, datetime)
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-11-27T13:00:00", "no UTC offset"),
        ("27/11/2026", "not an RFC 3339"),
        ("2026-11-27T25:00:00Z", "2026-11-27T25:00:00Z"),
        ("yesterday", "not an RFC 3339"),
    ],
)
def test_naive_or_malformed_times_are_usage_errors(text: str, message: str) -> None:
    """A time without an offset is ambiguous and refused, like anything that is not a
    time at all: argparse turns the error into exit 2 with the message."""
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        moment_arg(text)


@pytest.mark.unit
def test_json_is_one_array_with_exactly_the_contract_keys() -> None:
    """Hours as RFC 3339 UTC with Z, numbers as numbers, undefined efficiency null."""
    assert orjson.loads(format_json(ROWS)) == EXPECTED_JSON
    assert all(tuple(obj) == COLUMNS for obj in orjson.loads(format_json(ROWS)))
    assert format_json([]) == "[]"


@pytest.mark.unit
def test_csv_has_a_header_row_and_empty_efficiency_when_undefined() -> None:
    """The header names the contract's columns; values round-trip through a CSV reader."""
    lines = list(csv.reader(io.StringIO(format_csv(ROWS))))
    assert tuple(lines[0]) == COLUMNS
    assert lines[1] == ["EV-00002", "2026-11-27T13:00:00Z", "2.25", "2.5", "0.9", "5", "1"]
    assert lines[2][4] == ""
    assert format_csv([]) == ",".join(COLUMNS) + "\n"


@pytest.mark.unit
def test_table_is_aligned_with_a_dash_for_undefined_efficiency() -> None:
    """Every line has the same width, numbers are right-aligned to fixed decimals, and
    an empty report says so instead of printing a bare header."""
    lines = format_table(ROWS).splitlines()
    assert lines[0].split() == list(COLUMNS)
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split() == ["EV-00002", "2026-11-27T13:00:00Z", "2.250", "2.500", "0.900", "5", "1"]
    assert lines[3].split()[4] == "-"
    assert lines[0].index("efficiency") + len("efficiency") == lines[2].index("0.900") + len("0.900")
    assert format_table([]).splitlines()[-1] == "(no readings in the range)"


@pytest.mark.unit
def test_csv_and_json_round_to_six_decimals_and_the_table_to_three() -> None:
    """Binary noise (1.5524200000000001) is rounded away in CSV and JSON; the table
    shows three decimals."""
    row = EfficiencyRow("EV-1", H13, 1.5524200000000001, 2.0000004, 1.5524200000000001 / 2.0000004, 3, 0)
    assert orjson.loads(format_json([row]))[0] | {"vehicle_id": "", "hour": ""} == {
        "vehicle_id": "", "hour": "", "total_dc_kwh": 1.55242, "total_ac_kwh": 2.0, "efficiency": 0.77621,
        "matched": 3, "unmatched": 0,
    }  # fmt: skip
    assert format_csv([row]).splitlines()[1] == "EV-1,2026-11-27T13:00:00Z,1.55242,2.0,0.77621,3,0"
    assert format_table([row]).splitlines()[2].split()[2:5] == ["1.552", "2.000", "0.776"]


@pytest.mark.unit
def test_summary_rows_have_exactly_the_summary_keys() -> None:
    """--summary prints hour, vehicles, the sums and efficiency, in every format."""
    summary = [HourSummary(H13, 2, 2.25, 2.5, 0.9, 5, 4)]
    assert list(orjson.loads(format_json(summary))[0]) == list(SUMMARY_COLUMNS)
    assert SUMMARY_COLUMNS == ("hour", "vehicles", "total_dc_kwh", "total_ac_kwh", "efficiency", "matched", "unmatched")
    assert format_csv(summary, SUMMARY_COLUMNS).splitlines() == [
        ",".join(SUMMARY_COLUMNS),
        "2026-11-27T13:00:00Z,2,2.25,2.5,0.9,5,4",
    ]
    assert format_table(summary, SUMMARY_COLUMNS).splitlines()[2].split() == [
        "2026-11-27T13:00:00Z", "2", "2.250", "2.500", "0.900", "5", "4",
    ]  # fmt: skip


@pytest.mark.unit
def test_missing_plot_extra_is_one_line_naming_the_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Without matplotlib, --plot exits 2 before any query, with one line saying what
    to install."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    monkeypatch.setenv("FLEET_BRIDGE_DB_DSN", "postgresql://nobody@127.0.0.1:1/none")
    argv = ["report", "--from", "2026-11-27", "--to", "2026-11-28", "--plot", str(tmp_path / "x.png")]

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fleet-bridge report: --plot needs matplotlib: pip install 'fleet-telemetry-bridge[plot]'"


# --- the command against PostgreSQL -----------------------------------------------


@pytest.fixture
def run_cli(pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> RunCli:
    """``await run_cli(*argv)`` -> (exit code, stdout, stderr) of ``fleet-bridge`` in this
    process, bound to this test's schema (in a thread: ``main`` runs its own loop)."""
    monkeypatch.setenv("FLEET_BRIDGE_DB_DSN", pg_dsn)
    monkeypatch.setenv("FLEET_BRIDGE_DB_SCHEMA", schema)
    monkeypatch.setenv("FLEET_BRIDGE_LOG_FORMAT", "json")

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
async def two_hours(db: asyncpg.Connection, schema: str) -> None:
    """EV-1 on MTR-1: 12:00 one pair and one unmatched reading; 13:00 two pairs."""
    day = date(2026, 11, 27)
    for table in ("meter_telemetry_history", "vehicle_telemetry_history"):
        await ensure_partitions(db, schema, table, [day])
    await db.execute(
        f"""
        INSERT INTO "{schema}".vehicle_meter_mapping VALUES ('EV-1', 'MTR-1');
        INSERT INTO "{schema}".meter_telemetry_history (meter_id, recorded_at, received_at, kwh_consumed_ac)
        SELECT m, t, t, e FROM (VALUES
            ('MTR-1', timestamptz '2026-11-27T12:00:01Z', 1.0),
            ('MTR-1', '2026-11-27T13:00:01Z', 1.0), ('MTR-1', '2026-11-27T13:01:01Z', 0.5)) AS r(m, t, e);
        INSERT INTO "{schema}".vehicle_telemetry_history (vehicle_id, recorded_at, received_at, kwh_delivered_dc)
        SELECT v, t, t, e FROM (VALUES
            ('EV-1', timestamptz '2026-11-27T12:00:00Z', 0.75), ('EV-1', '2026-11-27T12:30:00Z', 9.0),
            ('EV-1', '2026-11-27T13:00:00Z', 1.0), ('EV-1', '2026-11-27T13:01:00Z', 0.5)) AS r(v, t, e);
        """
    )


REPORT = ["report", "--from", "2026-11-27T12:00:00Z", "--to", "2026-11-27T15:00:00+01:00"]


@pytest.mark.integration
@pytest.mark.usefixtures("two_hours")
async def test_report_json_from_the_command(run_cli: RunCli) -> None:
    """`fleet-bridge report --format json` prints the hours newest first, exit 0."""
    code, out, _ = await run_cli(*REPORT, "--format", "json")

    assert code == 0
    assert orjson.loads(out) == [
        {"vehicle_id": "EV-1", "hour": "2026-11-27T13:00:00Z", "total_dc_kwh": 1.5, "total_ac_kwh": 1.5,
         "efficiency": 1.0, "matched": 2, "unmatched": 0},
        {"vehicle_id": "EV-1", "hour": "2026-11-27T12:00:00Z", "total_dc_kwh": 0.75, "total_ac_kwh": 1.0,
         "efficiency": 0.75, "matched": 1, "unmatched": 1},
    ]  # fmt: skip


@pytest.mark.integration
@pytest.mark.usefixtures("two_hours")
async def test_report_csv_and_table_for_one_vehicle(
    run_cli: RunCli,
) -> None:
    """`--vehicle` with `--format csv` gives a header and one line per hour; the default
    format is the aligned table."""
    code, out, _ = await run_cli(*REPORT, "--vehicle", "EV-1", "--format", "csv")
    assert code == 0
    assert out.splitlines() == [
        ",".join(COLUMNS),
        "EV-1,2026-11-27T13:00:00Z,1.5,1.5,1.0,2,0",
        "EV-1,2026-11-27T12:00:00Z,0.75,1.0,0.75,1,1",
    ]

    code, out, _ = await run_cli(*REPORT, "--vehicle", "EV-1")
    assert code == 0
    assert [line.split() for line in out.splitlines()[2:]] == [
        ["EV-1", "2026-11-27T13:00:00Z", "1.500", "1.500", "1.000", "2", "0"],
        ["EV-1", "2026-11-27T12:00:00Z", "0.750", "1.000", "0.750", "1", "1"],
    ]


@pytest.mark.integration
@pytest.mark.usefixtures("two_hours")
async def test_report_plot_from_the_command(run_cli: RunCli, tmp_path: Path) -> None:
    """`--plot FILE.png` writes the picture as well as printing the report."""
    pytest.importorskip("matplotlib")
    code, out, err = await run_cli(*REPORT, "--format", "json", "--plot", str(tmp_path / "r.png"))

    assert code == 0
    assert len(orjson.loads(out)) == 2
    assert (tmp_path / "r.png").stat().st_size > 0
    assert "r.png" in err


@pytest.mark.integration
@pytest.mark.usefixtures("two_hours")
async def test_unmapped_vehicle_exits_1_with_one_line(
    run_cli: RunCli,
) -> None:
    """`--vehicle` without a mapping: exit 1, nothing on stdout, one line naming the
    vehicle and how to load a mapping."""
    code, out, err = await run_cli(*REPORT, "--vehicle", "EV-404")

    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "'EV-404' has no meter mapping" in err
    assert "mapping import" in err


@pytest.mark.unit
def test_empty_or_naive_ranges_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """--from not before --to, or a time without an offset, is a usage error (exit 2),
    found before any connection is tried."""
    assert main(["report", "--from", "2026-11-28", "--to", "2026-11-27"]) == 2
    assert "--from must be before --to" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exited:
        main(["report", "--from", "2026-11-27T00:00:00", "--to", "2026-11-28"])
    assert exited.value.code == 2
    assert "no UTC offset" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "problem"),
    [("missing-dir/r.png", "does not exist"), ("r.svg", "must end in .png"), ("a-directory.png", "is a directory")],
)
def test_a_plot_file_that_cannot_be_written_exits_2_before_any_query(
    name: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The --plot path is checked first: with no database listening, the command still
    exits 2 naming the problem, instead of 1 for the connection (or a failure after a
    long query)."""
    pytest.importorskip("matplotlib")
    (tmp_path / "a-directory.png").mkdir()
    monkeypatch.setenv("FLEET_BRIDGE_DB_DSN", "postgresql://nobody@127.0.0.1:1/none")
    argv = ["report", "--from", "2026-11-27", "--to", "2026-11-28", "--plot", str(tmp_path / name)]

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert problem in err


@pytest.mark.integration
@pytest.mark.usefixtures("two_hours")
async def test_summary_and_live_from_the_command(run_cli: RunCli) -> None:
    """`--summary` sums the hours over the vehicles; `--live` gives what the default
    gives (nothing is rolled up here, and with a roll-up it must not differ either)."""
    code, out, _ = await run_cli(*REPORT, "--summary", "--format", "json")
    assert code == 0
    assert orjson.loads(out) == [
        {"hour": "2026-11-27T13:00:00Z", "vehicles": 1, "total_dc_kwh": 1.5, "total_ac_kwh": 1.5, "efficiency": 1.0,
         "matched": 2, "unmatched": 0},
        {"hour": "2026-11-27T12:00:00Z", "vehicles": 1, "total_dc_kwh": 0.75, "total_ac_kwh": 1.0,
         "efficiency": 0.75, "matched": 1, "unmatched": 1},
    ]  # fmt: skip
    for extra in ([], ["--summary"], ["--vehicle", "EV-1"]):
        default = await run_cli(*REPORT, *extra, "--format", "csv")
        assert await run_cli(*REPORT, *extra, "--format", "csv", "--live") == default


@pytest.mark.integration
async def test_relative_times_count_back_from_now(run_cli: RunCli, db: asyncpg.Connection, schema: str) -> None:
    """`--from -3h --to now` covers the last three hours by the product's clock: a
    reading 2 hours old is in, one 4 hours old is not."""
    now = clock.now()
    for table in ("meter_telemetry_history", "vehicle_telemetry_history"):
        await ensure_partitions(db, schema, table, {(now - timedelta(hours=h)).date() for h in (2, 4)})
    await db.execute(f"INSERT INTO \"{schema}\".vehicle_meter_mapping VALUES ('EV-1', 'MTR-1')")
    for hours_ago in (2, 4):
        await db.execute(
            f'INSERT INTO "{schema}".vehicle_telemetry_history (vehicle_id, recorded_at, received_at, kwh_delivered_dc)'
            " VALUES ('EV-1', $1, $1, 1.0)",
            now - timedelta(hours=hours_ago),
        )

    code, out, _ = await run_cli("report", "--from", "-3h", "--to", "now", "--format", "json")

    assert code == 0
    assert [(r["vehicle_id"], r["unmatched"]) for r in orjson.loads(out)] == [("EV-1", 1)]
