"""Capped exponential backoff with full jitter (pure)."""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, *, base_s: float = 0.2, cap_s: float = 15.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    Full jitter spreads the retries of many replicas after a shared outage, so they
    do not reconnect to the database or broker in lock-step.
    """
    ceiling = min(cap_s, base_s * 2 ** min(attempt - 1, 30))
    return (rng or random).uniform(ceiling / 2, ceiling)
