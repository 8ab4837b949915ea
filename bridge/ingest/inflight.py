"""The in-flight window: how many MQTT messages the process holds, and the one
place that decides when the broker link may read more.

A message enters the window when a link reads it off the socket and leaves it
when it is acknowledged after COMMIT (or discarded with a link that died: the
broker redelivers it). The links stop reading the socket while the window is
full, so the broker's backlog stays in the broker (TCP back-pressure), and read
again once it has drained to half.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["InflightWindow"]


class InflightWindow:
    """Counts the messages held between socket read and acknowledgement."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._held = 0
        self._on_room: list[Callable[[], None]] = []

    @property
    def held(self) -> int:
        return self._held

    @property
    def room(self) -> int:
        """How many more messages may enter; 0 or less: stop reading."""
        return self.capacity - self._held

    @property
    def drained(self) -> bool:
        """Whether a paused reader should read again: at most half full, so that it
        reads in large gulps rather than one message at a time."""
        return self._held <= self.capacity // 2

    def acquire(self, count: int) -> None:
        """``count`` messages entered the process."""
        self._held += count

    def release(self, count: int) -> None:
        """``count`` messages left the process (acknowledged or discarded)."""
        if count > self._held:
            raise ValueError(f"releasing {count} messages, but only {self._held} are held")
        self._held -= count
        if count and self.drained:
            for callback in list(self._on_room):
                callback()

    def on_room(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` whenever a release leaves the window drained; returns
        the function that stops it (a link registers while it is connected)."""
        self._on_room.append(callback)
        return lambda: self._on_room.remove(callback)
