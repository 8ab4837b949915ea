"""``fleet-bridge status``: the fleet right now, read from the hot (current-state) tables.

A device is *reporting* when its newest reading is at most ``metrics.stale_after_s``
old, and *stale* otherwise: the same rule as the ``fleet_bridge_devices_stale``
gauge. Power sums cover reporting devices only (a stale device's last power
value says nothing about now); a reading without ``power_kw`` adds nothing.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from bridge import clock
from bridge.commands.table import aligned
from bridge.db import qualified
from bridge.streams import STREAM_NAMES, STREAMS

__all__ = ["FleetStatus", "StreamStatus", "fetch_status", "render_json", "render_table", "status_sql"]


@dataclasses.dataclass(frozen=True)
class StreamStatus:
    """One stream's devices, as of the snapshot."""

    reporting: int
    stale: int
    power_kw: float
    newest: datetime | None
    oldest: datetime | None

    @property
    def devices(self) -> int:
        return self.reporting + self.stale


@dataclasses.dataclass(frozen=True)
class FleetStatus:
    """Both streams, read in one snapshot; ``as_of`` is the product's clock (bridge.clock)."""

    as_of: datetime
    stale_after_s: int
    meter: StreamStatus
    vehicle: StreamStatus


def status_sql(schema: str, stream: str) -> str:
    """One stream's counts, power sum and reading range; ``$1`` is the stale cutoff."""
    return (
        "SELECT count(*) FILTER (WHERE recorded_at >= $1) AS reporting,"
        " count(*) FILTER (WHERE recorded_at < $1) AS stale,"
        " coalesce(sum(power_kw) FILTER (WHERE recorded_at >= $1), 0) AS power_kw,"
        " max(recorded_at) AS newest, min(recorded_at) AS oldest"
        f" FROM {qualified(schema, STREAMS[stream].current_table)}"
    )


async def fetch_status(conn: asyncpg.Connection, schema: str, stale_after_s: int) -> FleetStatus:
    """Read both hot tables in one read-only snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        as_of = clock.now()
        cutoff = as_of - timedelta(seconds=stale_after_s)
        streams = {}
        for stream in STREAM_NAMES:
            row = await conn.fetchrow(status_sql(schema, stream), cutoff)
            assert row is not None  # an aggregate without GROUP BY returns one row
            streams[stream] = StreamStatus(
                row["reporting"], row["stale"], float(row["power_kw"]), row["newest"], row["oldest"]
            )
    return FleetStatus(as_of, stale_after_s, **streams)


# --- formatting (pure) ------------------------------------------------------------


def _rfc3339(ts: datetime | None, timespec: str) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def _stream_dict(status: StreamStatus) -> dict[str, Any]:
    return {
        "devices": status.devices,
        "reporting": status.reporting,
        "stale": status.stale,
        "newest_reading": _rfc3339(status.newest, "milliseconds"),
        "oldest_reading": _rfc3339(status.oldest, "milliseconds"),
    }


def render_json(status: FleetStatus) -> str:
    """One JSON object; times in RFC 3339 UTC, power in kW rounded to the watt."""
    doc = {
        "as_of": _rfc3339(status.as_of, "milliseconds"),
        "stale_after_s": status.stale_after_s,
        "total_ac_power_kw": round(status.meter.power_kw, 3),
        "total_dc_power_kw": round(status.vehicle.power_kw, 3),
        "meter": _stream_dict(status.meter),
        "vehicle": _stream_dict(status.vehicle),
    }
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()


def render_table(status: FleetStatus) -> str:
    """A short human-readable report: one line per stream, then the power totals."""
    header = ("stream", "devices", "reporting", "stale", "newest reading", "oldest reading")
    rows = []
    for name in STREAM_NAMES:
        s: StreamStatus = getattr(status, name)
        times = (_rfc3339(s.newest, "seconds") or "-", _rfc3339(s.oldest, "seconds") or "-")
        rows.append((name, str(s.devices), str(s.reporting), str(s.stale), *times))
    lines = [
        f"fleet at {_rfc3339(status.as_of, 'seconds')} (stale: no reading for {status.stale_after_s} s)",
        "",
        *aligned(header, rows, numeric={1, 2, 3}),
        "",
        f"total AC power (reporting meters):   {status.meter.power_kw:.3f} kW",
        f"total DC power (reporting vehicles): {status.vehicle.power_kw:.3f} kW",
    ]
    return "\n".join(lines)
