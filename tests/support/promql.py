"""Which metric names a PromQL expression reads, and which ones the bridge exports:
enough PromQL to check that shipped rules and dashboards name real series."""

from __future__ import annotations

import re

from bridge.metrics import Metrics

# Series a Prometheus server makes itself; rules may use them next to ours.
PROMETHEUS_SERIES = frozenset({"up"})

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)\b(?!\s*\()")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
    | {"inf", "nan", "Inf", "NaN"}
)
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (function names and label names excluded)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}


def exported_series() -> set[str]:
    """Every series name the bridge's registry can expose, with the type's suffixes."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names
