"""Command-line behaviour: probes, version, exit codes, errors that name the place."""

from __future__ import annotations

import socket
from collections.abc import Iterator

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
    port = free_port()
    result = run_cli(["check", "--timeout", "2"], {**bridge_env, "FLEET_BRIDGE_MQTT_PORT": str(port)})
    assert result.returncode == 1
    assert f"mqtt at {bridge_env['FLEET_BRIDGE_MQTT_HOST']}:{port}: " in result.stderr
    assert "database" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_check_names_the_database_address_it_cannot_reach(bridge_env: dict[str, str]) -> None:
    """With nothing listening on the database port, exit 1 naming host and port."""
    port = free_port()
    dsn = f"postgresql://postgres@127.0.0.1:{port}/test"
    result = run_cli(["check", "--timeout", "5"], {**bridge_env, "FLEET_BRIDGE_DB_DSN": dsn})
    assert result.returncode == 1
    assert f"cannot connect to the database at 127.0.0.1:{port}: " in result.stderr
    assert "mqtt" not in result.stderr


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes the handshake) and
    never answers: a database that hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.integration
def test_check_timeout_bounds_the_database_probe(bridge_env: dict[str, str], silent_port: int) -> None:
    """--timeout applies to the database too: a database that never answers, with a
    connect timeout of 10 minutes, fails the check after --timeout, naming it."""
    env = {
        **bridge_env,
        "FLEET_BRIDGE_DB_DSN": f"postgresql://postgres@127.0.0.1:{silent_port}/test",
        "FLEET_BRIDGE_DB_CONNECT_TIMEOUT_S": "600",
    }
    result = run_cli(["check", "--timeout", "1"], env, timeout=120)  # a failure bound, not a speed claim
    assert result.returncode == 1
    assert f"database at 127.0.0.1:{silent_port}: no answer within 1 s" in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("command", [["status"], ["report", "--from", "2026-11-27", "--to", "2026-11-28"]])
def test_commands_on_a_schema_that_is_not_migrated_say_to_migrate(
    command: list[str], bridge_env: dict[str, str], schema: str
) -> None:
    """status and report on a schema migrate never made: exit 1, one line saying so
    and what to run, no traceback."""
    result = run_cli(command, bridge_env)
    assert result.returncode == 1
    assert result.stderr == f"fleet-bridge {command[0]}: schema {schema} is not migrated: run fleet-bridge migrate\n"


@pytest.mark.unit
def test_version_and_usage_errors() -> None:
    """--version prints the package version; an unknown command is a usage error (2)."""
    version = run_cli(["--version"], {})
    assert version.returncode == 0
    assert version.stdout.startswith("fleet-bridge ")
    assert run_cli(["frobnicate"], {}).returncode == 2
