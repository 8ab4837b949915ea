"""What the operator sees: a progress bar on a terminal, plain periodic lines in a
log, and the end-of-run summary (also written as ``summary.json``)."""

from __future__ import annotations

import collections
import time
from typing import Any, Final, TextIO

from loadgen.faults import FAULT_KINDS
from loadgen.plan import RunSpec
from loadgen.publisher import Progress, RunOutcome
from loadgen.simulation import rfc3339_ms

__all__ = ["ProgressDisplay", "progress_text", "summarize", "summary_text"]

BAR_WIDTH: Final = 30


def progress_text(progress: Progress) -> str:
    """One line: simulated time done, messages published, rate so far."""
    fraction = max(0.0, min(1.0, progress.simulated_fraction))
    filled = round(fraction * BAR_WIDTH)
    rate = progress.published / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:6.1%} of simulated time, "
        f"{progress.published:,} published, {rate:,.0f} msg/s, {progress.elapsed_s:,.0f} s"
    )


class ProgressDisplay:
    """Redraws one line on a terminal; elsewhere prints a line every ``every_s`` seconds."""

    def __init__(self, stream: TextIO, *, tty: bool, every_s: float = 10.0) -> None:
        self._stream = stream
        self._tty = tty
        self._every_s = every_s if not tty else 0.25
        self._last = 0.0
        self._drawn = False
        self._undrawn: Progress | None = None  # the newest progress not shown yet

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last < self._every_s:
            self._undrawn = progress
            return
        self._last = now
        self._draw(progress)

    def _draw(self, progress: Progress) -> None:
        self._undrawn = None
        if self._tty:
            self._stream.write(f"\r{progress_text(progress)}\x1b[K")
            self._drawn = True
        else:
            self._stream.write(f"{progress_text(progress)}\n")
        self._stream.flush()

    def close(self) -> None:
        """Show the last progress (100 % for a run that finished), and end the
        redrawn line so what follows starts on its own."""
        if self._undrawn is not None:
            self._draw(self._undrawn)
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()


def summarize(outcome: RunOutcome, spec: RunSpec, *, processes: int, speedup: float) -> dict[str, Any]:
    """The run's figures, as written to ``summary.json``."""
    faults: collections.Counter[str] = collections.Counter()
    for result in outcome.results:
        faults.update(result.faults)
    elapsed = max(outcome.finished_at - outcome.started_at, 1e-9)
    return {
        "published": outcome.published,
        "readings": sum(r.readings for r in outcome.results),
        "elapsed_s": round(elapsed, 3),
        "rate_msg_per_s": round(outcome.published / elapsed, 1),
        "processes": processes,
        "speedup": speedup,
        "pairs": spec.pairs,
        "interval_s": spec.interval_ms / 1000,
        "start": rfc3339_ms(spec.start_ms),
        "end": rfc3339_ms(spec.end_ms),
        "seed": spec.seed,
        "faults": {kind: faults[kind] for kind in FAULT_KINDS},
        "malformed_by_reason": {
            key.removeprefix("malformed:"): n for key, n in sorted(faults.items()) if key.startswith("malformed:")
        },
        "interrupted": outcome.interrupted,
    }


def summary_text(summary: dict[str, Any]) -> str:
    """The summary for people: what was sent, how fast, which faults."""
    pace = "as fast as possible" if not summary["speedup"] else f"speedup {summary['speedup']:g}"
    faults = ", ".join(f"{kind} {n:,}" for kind, n in summary["faults"].items())
    lines = [
        f"published {summary['published']:,} messages in {summary['elapsed_s']:,.1f} s: "
        f"{summary['rate_msg_per_s']:,.0f} msg/s ({summary['processes']} processes, {pace})",
        f"simulated {summary['pairs']:,} vehicle/meter pairs from {summary['start']} to {summary['end']}, "
        f"{summary['readings']:,} distinct valid readings",
        f"faults injected: {faults}",
    ]
    if summary["malformed_by_reason"]:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in summary["malformed_by_reason"].items())
        lines.append(f"malformed by reason: {reasons}")
    if summary["interrupted"]:
        lines.append("interrupted: the ground truth covers what was published until then")
    return "\n".join(lines)
