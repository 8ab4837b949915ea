"""``--from T --to T`` for the commands that take a time range (``report``, ``rollup``).

A relative time (``-24h``) is kept relative until the command runs, then every
time of the command is resolved against ONE reading of :mod:`bridge.clock`, so
``--from -24h --to now`` is exactly 24 hours.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta
from typing import Final

from bridge.timeparse import TimeFormatError, parse_moment

__all__ = ["FORMS", "add_range_arguments", "moment_arg", "resolve"]

FORMS: Final = "RFC 3339 with Z or an offset, YYYY-MM-DD (UTC midnight), now, or back from now: -90m, -24h, -7d"
# argparse takes a value starting with "-" for an unknown option, except a negative
# number, which it recognizes with this pattern: a relative time must count as one.
_NEGATIVE_VALUE: Final = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+[mhdMHD]$")


def moment_arg(text: str) -> datetime | timedelta:
    """An argparse type: a time, or a distance back from now (see :func:`resolve`)."""
    try:
        return parse_moment(text)
    except TimeFormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve(moment: datetime | timedelta, now: datetime) -> datetime:
    """A time argument as an instant; relative ones count back from ``now``."""
    return now + moment if isinstance(moment, timedelta) else moment


def add_range_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``--from`` (inclusive) and ``--to`` (exclusive), parsed by :func:`moment_arg`."""
    parser._negative_number_matcher = _NEGATIVE_VALUE  # noqa: SLF001 - see _NEGATIVE_VALUE
    parser.add_argument("--from", dest="start", type=moment_arg, required=required, metavar="T",
                        help=f"start, inclusive: {FORMS}")  # fmt: skip
    parser.add_argument("--to", dest="end", type=moment_arg, required=required, metavar="T",
                        help="end, exclusive; same forms as --from")  # fmt: skip
