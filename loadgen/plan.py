"""What one publisher process sends: its slice of the fleet, simulated interval by
interval, faults applied, merged into one stream ordered by publish time.

Pure and lazy: memory holds about one interval of messages plus the ones that
faults delay, whatever the length of the run.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from collections.abc import Iterator

from loadgen.faults import FaultInjector, FaultRates, Outgoing, max_skew_ms
from loadgen.simulation import JITTER_MS, PairSim

__all__ = ["RunSpec", "plan", "slice_pairs"]


@dataclasses.dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything that determines the messages of a run (with the pair numbers)."""

    pairs: int
    interval_ms: int
    steps: int
    start_ms: int
    seed: int
    rates: FaultRates

    @property
    def end_ms(self) -> int:
        """The end of simulated time: the last interval's readings are before it."""
        return self.start_ms + self.steps * self.interval_ms


def slice_pairs(pairs: int, processes: int, index: int) -> range:
    """The pair numbers (from 1) process ``index`` of ``processes`` owns: contiguous, near-equal."""
    return range(1 + index * pairs // processes, 1 + (index + 1) * pairs // processes)


def plan(spec: RunSpec, pairs: range) -> Iterator[Outgoing]:
    """Every message for ``pairs``, in order of ``due_ms`` (ties: in the order made)."""
    sims = [PairSim(p, seed=spec.seed, start_ms=spec.start_ms, interval_ms=spec.interval_ms) for p in pairs]
    injectors = [
        FaultInjector(
            spec.rates,
            random.Random(f"{spec.seed}:faults:{p}"),  # noqa: S311 - a simulation, not cryptography
            interval_ms=spec.interval_ms,
            end_ms=spec.end_ms,
        )
        for p in pairs
    ]
    # A reading of interval k+1 can be published at most this long before k+1 starts
    # (its vehicle's jitter or skew), so everything due earlier is final.
    lookback_ms = max(JITTER_MS, max_skew_ms(spec.interval_ms))
    pending: list[tuple[int, int, Outgoing]] = []
    order = itertools.count()
    for k in range(spec.steps):
        for sim, injector in zip(sims, injectors, strict=True):
            for message in injector.inject(*sim.step(k)):
                heapq.heappush(pending, (message.due_ms, next(order), message))
        horizon = spec.start_ms + (k + 1) * spec.interval_ms - lookback_ms
        while pending and pending[0][0] < horizon:
            yield heapq.heappop(pending)[2]
    while pending:
        yield heapq.heappop(pending)[2]
