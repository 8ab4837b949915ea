"""The registry's own additions: which build runs, and the process and platform
series prometheus-client's default registry would have."""

from __future__ import annotations

import platform
import sys

import pytest

import bridge
from bridge.metrics import Metrics

pytestmark = pytest.mark.unit


def test_build_info_names_the_version_and_the_python() -> None:
    """fleet_bridge_build_info is 1 with the package version and the Python version."""
    registry = Metrics().registry
    labels = {"version": bridge.__version__, "python": platform.python_version()}
    assert registry.get_sample_value("fleet_bridge_build_info", labels) == 1


@pytest.mark.skipif(sys.platform != "linux", reason="prometheus-client reads process figures from /proc")
def test_process_and_platform_series_are_on_the_registry() -> None:
    """Resident memory, CPU time and open files of this process, and python_info."""
    registry = Metrics().registry
    rss = registry.get_sample_value("process_resident_memory_bytes")
    assert rss is not None
    assert rss > 0
    assert registry.get_sample_value("process_cpu_seconds_total") is not None
    assert registry.get_sample_value("process_open_fds") is not None
    (info,) = [sample for family in registry.collect() if family.name == "python_info" for sample in family.samples]
    assert (info.labels["version"], info.value) == (platform.python_version(), 1)
