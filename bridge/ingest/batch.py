"""A micro-batch and the pure transformations the writer needs (no IO)."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

from bridge.ingest.link import Delivery
from bridge.ingest.parse import Reading, Reject
from bridge.streams import STREAMS, StreamSpec

__all__ = ["Batch", "history_columns", "split_by_stream"]


@dataclasses.dataclass
class Batch:
    """Messages received together, written in one transaction, then acknowledged.

    ``deliveries`` are the messages in arrival order with the link each came from
    (what acknowledging them takes); ``readings`` and ``rejects`` are what they
    parsed into.
    """

    deliveries: list[Delivery] = dataclasses.field(default_factory=list)
    readings: list[Reading] = dataclasses.field(default_factory=list)
    rejects: list[Reject] = dataclasses.field(default_factory=list)
    opened_at: float = 0.0  # monotonic time of the first message
    received: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)  # per stream label

    def __len__(self) -> int:
        return len(self.deliveries)


def split_by_stream(readings: Sequence[Reading]) -> dict[str, list[Reading]]:
    """Readings grouped by stream name, every stream present (maybe empty)."""
    groups: dict[str, list[Reading]] = {name: [] for name in STREAMS}
    for reading in readings:
        groups[reading.stream.name].append(reading)
    return groups


def history_columns(spec: StreamSpec, readings: Sequence[Reading]) -> list[list[Any]]:
    """Column arrays for the unnest() INSERT, rows sorted by (device id, recorded_at).

    A fixed row order makes concurrent writers (replicas, duplicates of one reading
    on two of them) take their locks in the same order, so they cannot deadlock.
    """
    rows = sorted(readings, key=lambda r: (r.device_id, r.recorded_at))
    width = len(spec.value_fields)
    columns: list[list[Any]] = [
        [r.device_id for r in rows],
        [r.recorded_at for r in rows],
        [r.received_at for r in rows],
    ]
    columns += [[r.values[i] for r in rows] for i in range(width)]
    columns.append([r.seq for r in rows])
    return columns
