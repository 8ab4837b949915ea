"""Command-line behaviour: probes, version, exit codes."""

from __future__ import annotations

import pytest

from tests.support.helpers import run_cli
from tests.support.services import free_port


@pytest.mark.integration
def test_check_passes_when_both_links_answer(bridge_env: dict[str, str]) -> None:
    """`fleet-bridge check` exits 0 with a reachable broker and database."""
    result = run_cli(["check"], bridge_env)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.integration
def test_check_fails_and_names_the_broken_link(bridge_env: dict[str, str]) -> None:
    """With nothing listening on the broker port, exit 1 and say it is MQTT."""
    result = run_cli(["check", "--timeout", "2"], {**bridge_env, "FLEET_BRIDGE_MQTT_PORT": str(free_port())})
    assert result.returncode == 1
    assert "mqtt" in result.stderr
    assert "database" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.unit
def test_version_and_usage_errors() -> None:
    """--version prints the package version; an unknown command is a usage error (2)."""
    version = run_cli(["--version"], {})
    assert version.returncode == 0
    assert version.stdout.startswith("fleet-bridge ")
    assert run_cli(["frobnicate"], {}).returncode == 2
