"""When to close a micro-batch: a pure policy, unit-tested without services."""

from __future__ import annotations

import dataclasses

__all__ = ["FlushPolicy"]


@dataclasses.dataclass(frozen=True)
class FlushPolicy:
    """Flush when the batch is full, when its oldest message has waited
    ``max_delay_s``, or when no message came for ``idle_s`` (the broker's queue is
    drained, so waiting longer only adds latency)."""

    max_rows: int
    max_delay_s: float

    @property
    def idle_s(self) -> float:
        return min(self.max_delay_s, 0.02)

    def is_full(self, rows: int) -> bool:
        return rows >= self.max_rows

    def wait_budget(self, rows: int, age_s: float) -> float | None:
        """How long to wait for the next message before flushing; None: no deadline.

        Zero means flush now.
        """
        if rows == 0:
            return None
        if self.is_full(rows):
            return 0.0
        return max(0.0, min(self.max_delay_s - age_s, self.idle_s))
