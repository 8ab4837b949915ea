"""The one parser of times (bridge/timeparse.py): RFC 3339 for payloads, the clock
variable and command arguments, plus the command line's dates and relative times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bridge.commands.cli import build_parser
from bridge.timeparse import TimeFormatError, parse_moment, parse_rfc3339

pytestmark = pytest.mark.unit

T = datetime(2026, 11, 27, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T12:00:00Z", T),
        ("2026-11-27t12:00:00z", T),
        ("2026-11-27 13:30:00+01:30", T),
        ("2026-11-27T12:00:00.123456789Z", T + timedelta(microseconds=123456)),
    ],
)
def test_rfc3339_with_an_offset_is_read_as_utc(text: str, expected: datetime) -> None:
    """Z or an offset, T or a blank, up to nine fraction digits (cut to microseconds)."""
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "seconds_required", "problem"),
    [
        ("2026-11-27T12:00:00", True, "no UTC offset"),
        ("2026-11-27T12:00Z", True, "not an RFC 3339 time"),
        ("2026-11-27", True, "not an RFC 3339 time"),
        ("2026-02-30T12:00:00Z", True, "not a valid date"),
        ("2026-11-27T12:00", False, "no UTC offset"),
    ],
)
def test_a_time_without_offset_or_seconds_or_date_is_refused(text: str, seconds_required: bool, problem: str) -> None:
    """A naive time is ambiguous; a device's time needs seconds; a 30 February is no date."""
    with pytest.raises(TimeFormatError, match=problem):
        parse_rfc3339(text, seconds_required=seconds_required)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", timedelta(0)),
        ("NOW", timedelta(0)),
        ("-90m", -timedelta(minutes=90)),
        ("-24h", -timedelta(hours=24)),
        ("-7d", -timedelta(days=7)),
        ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
        ("2026-11-27T13:00+01:00", T),
    ],
)
def test_command_line_times_are_absolute_or_back_from_now(text: str, expected: datetime | timedelta) -> None:
    """``now`` and ``-N{m,h,d}`` stay relative (resolved later against one clock reading);
    a date is UTC midnight; a typed time may leave out the seconds."""
    assert parse_moment(text) == expected


@pytest.mark.parametrize("text", ["+24h", "-24", "-1w", "yesterday", "2026-13-01"])
def test_other_command_line_times_are_refused(text: str) -> None:
    """Only the forms above: a future relative time or another unit is an error, not a guess."""
    with pytest.raises(TimeFormatError):
        parse_moment(text)


def test_a_relative_time_is_an_option_value_not_an_option() -> None:
    """``--from -24h`` gives --from its value: argparse would otherwise read "-24h" as an
    unknown option, since only negative numbers are let through."""
    args = build_parser().parse_args(["report", "--from", "-24h", "--to", "now"])
    assert (args.start, args.end) == (-timedelta(hours=24), timedelta(0))
