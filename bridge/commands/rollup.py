"""``fleet-bridge rollup [--from T --to T]``: one roll-up pass, then what it did.

Without a range it does what the daemon's loop does every
``FLEET_BRIDGE_ROLLUP_INTERVAL_S``: the dirty hours that are settled. With a range
it recomputes every hour the range touches (a backfill after an upgrade or an
import). If a pass is running elsewhere (a daemon's loop) it waits for it.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from bridge import clock
from bridge.analytics.rollup import PassResult, retained_from, rollup_lock, run_pass
from bridge.commands.ranges import add_range_arguments, resolve
from bridge.commands.table import aligned
from bridge.config import Settings
from bridge.db import connect

__all__ = ["PARALLEL_SLICES", "add_rollup_arguments", "cmd_rollup", "render_result"]

# Connections an hour is split over: a fleet-hour is CPU work for the server, and
# two slices keep two of its cores busy. (The daemon's loop uses one, so that
# ingest keeps the rest.)
PARALLEL_SLICES: Final = 2
PROGRESS_EVERY_S: Final = 5.0


def add_rollup_arguments(parser: argparse.ArgumentParser) -> None:
    add_range_arguments(parser, required=False)


def render_result(result: PassResult) -> str:
    """One line per day recomputed, then the totals; or that there was nothing to do."""
    if not result.vehicle_hours:
        return f"nothing to roll up (invalidations cleared: {result.invalidations})\n"
    rows = []
    for day, hours in itertools.groupby(sorted(result.vehicle_hours.items()), key=lambda item: item[0].date()):
        done = list(hours)
        rows.append((day.isoformat(), str(len(done)), str(sum(count for _, count in done))))
    lines = aligned(("day (UTC)", "hours", "vehicle-hours"), rows, numeric={1, 2}, rule=True)
    lines.append(
        f"rolled up {len(result.vehicle_hours)} hour(s), {result.total} vehicle-hour(s) in {result.seconds:.1f} s;"
        f" invalidations cleared: {result.invalidations}"
    )
    return "\n".join(lines) + "\n"


class _Progress:
    """A line on stderr every few seconds of a long pass."""

    def __init__(self, seconds: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._started = self._shown = seconds()

    def __call__(self, done: int, total: int, hour: datetime) -> None:
        now = self._seconds()
        if now - self._shown >= PROGRESS_EVERY_S and done < total:
            self._shown = now
            print(
                f"rollup: {done}/{total} hours ({100 * done // total} %), at {hour:%Y-%m-%dT%H:00Z},"
                f" {now - self._started:.0f} s",
                file=sys.stderr,
                flush=True,
            )


async def cmd_rollup(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when the pass is done (also when there was nothing to do), 2 on a bad range."""
    if (args.start is None) != (args.end is None):
        print("fleet-bridge rollup: give both --from and --to, or neither", file=sys.stderr)
        return 2
    now = clock.now()
    requested = None
    if args.start is not None:
        requested = resolve(args.start, now), resolve(args.end, now)
        if requested[0] >= requested[1]:
            print("fleet-bridge rollup: --from must be before --to (the range [from, to) is empty)", file=sys.stderr)
            return 2
    schema = settings.db.schema
    conns = [await connect(settings) for _ in range(PARALLEL_SLICES)]
    try:

        def waiting() -> None:
            print(f"fleet-bridge rollup: another pass holds schema {schema}'s roll-up; waiting", file=sys.stderr)

        async with rollup_lock(conns[0], schema, wait=waiting):
            result = await run_pass(
                conns,
                schema,
                now=now,
                settle=timedelta(seconds=settings.rollup.settle_s),
                keep_from=retained_from(now, settings.partitions.retention_days),
                requested=requested,
                progress=_Progress(),
            )
    finally:
        for conn in conns:
            await conn.close()
    sys.stdout.write(render_result(result))
    return 0
