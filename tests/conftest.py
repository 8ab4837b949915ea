"""Fixtures: PostgreSQL and Mosquitto for every test (see tests/support/services.py for the
order they are looked for in), a fresh schema and topic prefix per test, and the
real daemon as a subprocess. A guard keeps the markers honest: every test is
either ``unit`` or ``integration``, and a ``unit`` test uses no service."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog

from bridge.config import Settings, load_settings
from bridge.schema.migrate import apply_migrations
from tests.support.helpers import UNVERIFIED_PAHO, BridgeProcess
from tests.support.services import (
    Choice,
    MosquittoProcess,
    choose_mosquitto,
    choose_postgres,
    docker_available,
    find_mosquitto,
    find_postgres_bindir,
    mosquitto_from,
    postgres_from,
    tcp_open,
)

# Every fixture that reaches a service depends on one of these.
SERVICE_FIXTURES = frozenset({"pg_dsn", "mosquitto_choice"})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail, before any fixture runs, a test marked neither or both of ``unit`` and
    ``integration``, and a ``unit`` test that would reach PostgreSQL or Mosquitto:
    ``pytest -m unit`` must run with no services at all."""
    kinds = {mark.name for mark in item.iter_markers()} & {"unit", "integration"}
    if len(kinds) != 1:
        pytest.fail(f"{item.nodeid}: mark it either unit or integration (it has: {sorted(kinds)})", pytrace=False)
    used = SERVICE_FIXTURES & set(getattr(item, "fixturenames", ()))
    if "unit" in kinds and used:
        pytest.fail(f"{item.nodeid}: a unit test must not use services, but it requests {sorted(used)}", pytrace=False)


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    """Commands run in-process bind structlog to the stderr pytest captured for
    their test, closed afterwards: every test starts from structlog's defaults."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    with postgres_from(choose_postgres(os.environ, tcp_open, find_postgres_bindir, docker_available)) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def mosquitto_choice() -> Choice:
    return choose_mosquitto(os.environ, find_mosquitto, docker_available)


@pytest.fixture(scope="session")
def broker(mosquitto_choice: Choice) -> Iterator[tuple[str, int]]:
    """A broker shared by the tests (each uses its own topic prefix)."""
    with mosquitto_from(mosquitto_choice) as address:
        yield address


@pytest.fixture
def private_broker_with(mosquitto_choice: Choice) -> Iterator[Callable[..., MosquittoProcess]]:
    """``private_broker_with(extra_config, config_text=None)``: a started broker of this
    test's own, from the project's config (or ``config_text``) plus ``extra_config``
    lines (a later line wins); stopped at teardown."""
    if mosquitto_choice.branch == "skip":
        pytest.skip(mosquitto_choice.value)
    if mosquitto_choice.branch != "binary":
        pytest.skip("a broker of the test's own needs the mosquitto binary on this machine")
    started: list[MosquittoProcess] = []

    def start(extra_config: str, *, config_text: str | None = None) -> MosquittoProcess:
        proc = MosquittoProcess(mosquitto_choice.value, extra_config=extra_config, config_text=config_text)
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def private_broker(private_broker_with: Callable[..., MosquittoProcess]) -> MosquittoProcess:
    """A broker of this test's own, for tests that restart or reconfigure it."""
    return private_broker_with("")


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def schema(uid: str) -> str:
    return f"t_{uid}"


@pytest.fixture
def prefix(uid: str) -> str:
    return f"t{uid}/"


@pytest.fixture
async def db(pg_dsn: str, schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection, with this test's schema migrated and no partition yet (a test
    makes the days it uses: fixed ones, or ones relative to bridge.clock); the
    schema is dropped afterwards."""
    conn = await asyncpg.connect(pg_dsn)
    await apply_migrations(conn, schema)
    yield conn
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()


@pytest.fixture(scope="session")
def unverified_paho(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that, first on PYTHONPATH, makes the installed paho-mqtt report a
    release the fast reader was not verified against (as a security release would)."""
    directory = tmp_path_factory.mktemp("unverified-paho")
    info = directory / f"paho_mqtt-{UNVERIFIED_PAHO}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: paho-mqtt\nVersion: {UNVERIFIED_PAHO}\n")
    return directory


@pytest.fixture
def reader(request: pytest.FixtureRequest) -> str:
    """Which broker reader the daemon runs: "fast" (this project's paho is verified)
    unless the test is parametrized with tests.support.helpers.BOTH_READERS, whose
    "unverified-paho" makes the daemon see another paho release, so it runs the plain
    reader."""
    value: str = getattr(request, "param", "fast")
    return value


@pytest.fixture
def reader_env(reader: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if reader == "fast":
        return {}
    assert reader == "unverified-paho", reader
    directory: Path = request.getfixturevalue("unverified_paho")
    return {"PYTHONPATH": str(directory)}


@pytest.fixture
def bridge_env(
    pg_dsn: str, broker: tuple[str, int], schema: str, prefix: str, uid: str, reader_env: dict[str, str]
) -> dict[str, str]:
    """Environment for a daemon bound to this test's schema, prefix and broker."""
    host, port = broker
    return {
        **reader_env,
        "FLEET_BRIDGE_DB_DSN": pg_dsn,
        "FLEET_BRIDGE_DB_SCHEMA": schema,
        "FLEET_BRIDGE_MQTT_HOST": host,
        "FLEET_BRIDGE_MQTT_PORT": str(port),
        "FLEET_BRIDGE_MQTT_CLIENT_ID": f"bridge-{uid}",
        "FLEET_BRIDGE_MQTT_TOPIC_PREFIX": prefix,
        "FLEET_BRIDGE_METRICS_HOST": "127.0.0.1",
        "FLEET_BRIDGE_METRICS_STALE_CHECK_INTERVAL_S": "1",
        "FLEET_BRIDGE_LOG_LEVEL": "debug",
    }


@pytest.fixture
def settings(bridge_env: dict[str, str]) -> Settings:
    return load_settings(environ=bridge_env)


@pytest.fixture
def start_bridge(tmp_path: Path, bridge_env: dict[str, str]) -> Iterator[Callable[..., BridgeProcess]]:
    """Start the real daemon; ``start_bridge(**env_overrides)``. Stopped at teardown."""
    started: list[BridgeProcess] = []

    def start(**overrides: str) -> BridgeProcess:
        proc = BridgeProcess({**bridge_env, **overrides}, tmp_path / f"bridge-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
