"""Reading times written by people and devices: the one parser of RFC 3339 times
(device payloads, command arguments, the test clock) and the command line's
shorter forms (a date, ``now``, ``-24h``).

A time without a UTC offset is refused, never guessed: ``12:00`` means a
different instant on every server. Everything returned is timezone-aware UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["RELATIVE_UNITS", "TimeFormatError", "parse_moment", "parse_rfc3339"]

# RFC 3339 date-time. Seconds are optional only where a person types the time
# (``--from 2026-11-27T13:00Z``); a device's ``ts`` must have them.
RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?P<seconds>:\d{2}(?:\.\d{1,9})?)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)
DATE_ONLY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
RELATIVE: Final = re.compile(r"-(?P<count>\d{1,6})(?P<unit>[mhd])")
RELATIVE_UNITS: Final = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


class TimeFormatError(ValueError):
    """Not a time this parser accepts; the message says what is wrong with it."""


def parse_rfc3339(text: str, *, seconds_required: bool = True) -> datetime:
    """An RFC 3339 time with ``Z`` or an offset, as UTC.

    Fractions beyond microseconds are truncated. Raises :class:`TimeFormatError`
    for anything else, saying whether the offset is missing or the text is no time.
    """
    match = RFC3339.fullmatch(text)
    if match is None or (seconds_required and match["seconds"] is None):
        raise TimeFormatError(f"{text[:80]!r} is not an RFC 3339 time")
    if match["offset"] is None:
        raise TimeFormatError(f"{text[:80]!r} has no UTC offset (ambiguous): add Z or e.g. +01:00")
    try:
        return datetime.fromisoformat(text.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        raise TimeFormatError(f"{text[:80]!r} is not a valid date and time") from None


def parse_moment(text: str) -> datetime | timedelta:
    """A time given on the command line: RFC 3339 (seconds optional), a date (UTC
    midnight), ``now`` or a relative time ``-90m`` / ``-24h`` / ``-7d``.

    Relative forms come back as the (negative or zero) distance from "now", so that
    every time of one command is resolved against the same moment.
    """
    text = text.strip()
    if text.lower() == "now":
        return timedelta(0)
    relative = RELATIVE.fullmatch(text.lower())
    if relative is not None:
        return -int(relative["count"]) * RELATIVE_UNITS[relative["unit"]]
    if DATE_ONLY.fullmatch(text) is not None:
        try:
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        except ValueError:
            raise TimeFormatError(f"{text!r} is not a valid date") from None
    if RFC3339.fullmatch(text) is None:
        raise TimeFormatError(
            f"{text[:80]!r} is not an RFC 3339 time, a YYYY-MM-DD date, 'now' or a relative time like -24h"
        )
    return parse_rfc3339(text, seconds_required=False)
