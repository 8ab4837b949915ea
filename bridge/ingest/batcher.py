"""When to close a micro-batch: a pure policy, unit-tested without services."""

from __future__ import annotations

import dataclasses

__all__ = ["FlushPolicy"]


@dataclasses.dataclass(frozen=True)
class FlushPolicy:
    """Flush when the batch is full or when its oldest message has waited
    ``max_delay_s``.

    A batch is not closed early because the broker went quiet for a moment: at the
    fleet's steady rate that made a batch of a few readings every few tens of
    milliseconds, and the per-batch cost (a transaction, its round trips, the
    acknowledgements' write) then dominated the bridge's CPU. A backlog fills
    batches at once either way.
    """

    max_rows: int
    max_delay_s: float

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
        return max(0.0, self.max_delay_s - age_s)
