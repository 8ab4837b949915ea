"""Gap detection on the optional per-device ``seq`` counter (pure)."""

from __future__ import annotations

__all__ = ["SequenceTracker"]


class SequenceTracker:
    """Remembers the highest ``seq`` seen per device and reports forward jumps.

    A reading whose seq is more than one above the device's previous highest is a
    gap (counted, never rejected); repeats and late readings are not. The table is
    cleared when it outgrows ``max_devices`` so hostile ids cannot grow it forever.
    """

    def __init__(self, max_devices: int = 1_000_000) -> None:
        self._last: dict[tuple[str, str], int] = {}
        self._max_devices = max_devices

    def observe(self, stream: str, device_id: str, seq: int | None) -> bool:
        """Record ``seq``; True when it skipped over at least one value."""
        if seq is None:
            return False
        key = (stream, device_id)
        last = self._last.get(key)
        if last is not None and seq <= last:
            return False
        if len(self._last) >= self._max_devices and last is None:
            self._last.clear()
        self._last[key] = seq
        return last is not None and seq > last + 1
