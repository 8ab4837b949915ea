"""The product's one wall clock.

Everything that asks "what time is it?" asks here: the receive time of a message,
the commit time behind the lag metric, which day partitions to premake and which
to drop, which devices are stale, which hours are settled enough to roll up. So
"what day is it" has one source, and a test can move the whole product, daemon
subprocesses included, to any date and see it behave as it would then.

``FLEET_BRIDGE_TEST_CLOCK`` (an RFC 3339 time with an offset) starts the clock at
that moment when the process starts; it then runs at the real pace. It exists for
tests: the daemon logs a warning when it is set. Durations (timeouts, backoff,
batch age) use the monotonic clock and are not affected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from bridge.timeparse import TimeFormatError, parse_rfc3339

__all__ = ["CLOCK_ENV", "now", "offset", "offset_from", "today"]

CLOCK_ENV = "FLEET_BRIDGE_TEST_CLOCK"


def offset_from(environ: Mapping[str, str], real_now: datetime) -> timedelta:
    """How far the clock runs ahead of the real one (negative: behind)."""
    raw = environ.get(CLOCK_ENV, "").strip()
    if not raw:
        return timedelta(0)
    try:
        start = parse_rfc3339(raw)
    except TimeFormatError as exc:
        raise ValueError(f"{CLOCK_ENV}: {exc}") from None
    return start - real_now


_offset = offset_from(os.environ, datetime.now(UTC))


def _moved_now() -> datetime:
    return datetime.now(UTC) + _offset


def _real_now() -> datetime:
    return datetime.now(UTC)


# Read once per message on the ingest path: without a moved clock, not even an addition.
_now = _moved_now if _offset else _real_now


def now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return _now()


def today() -> date:
    """The current UTC day."""
    return now().date()


def offset() -> timedelta:
    """How far this process's clock is moved from the real one (zero unless a test moved it)."""
    return _offset
