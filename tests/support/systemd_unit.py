"""Reads the shipped systemd unit, so tests hold the daemon to the unit's own numbers."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.services import ROOT

UNIT_FILE = ROOT / "deploy" / "systemd" / "fleet-bridge.service"

_SPAN_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def directives(path: Path = UNIT_FILE) -> list[tuple[str, str, str]]:
    """Every ``(section, key, value)`` in file order (a key may repeat, as in systemd)."""
    found = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def values(key: str, section: str = "Service", path: Path = UNIT_FILE) -> list[str]:
    return [v for s, k, v in directives(path) if s == section and k == key]


def time_span_s(value: str) -> float:
    """A systemd time span ("30s", "1min 30s", "90") in seconds."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * _SPAN_UNITS[unit or "s"]
    return total


def timeout_stop_s() -> float:
    """The unit's TimeoutStopSec: how long a SIGTERM drain may take before SIGKILL."""
    (value,) = values("TimeoutStopSec")
    return time_span_s(value)
