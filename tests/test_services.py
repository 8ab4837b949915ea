"""The chain that provides PostgreSQL and Mosquitto to the tests (tests/support/services.py):
each branch is taken exactly when its condition holds, decided from fakes, so no
service and no Docker engine is needed. The last test starts a real private cluster."""

from __future__ import annotations

import inspect
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import asyncpg
import pytest

from bridge.schema.migrate import apply_migrations
from tests.support import services
from tests.support.services import (
    DEFAULT_PG_DSN,
    MOSQUITTO_CONF,
    MOSQUITTO_IMAGE,
    POSTGRES_IMAGE,
    Choice,
    PostgresCluster,
    broker_config,
    choose_mosquitto,
    choose_postgres,
    find_mosquitto,
    find_postgres_bindir,
    mosquitto_from,
    postgres_from,
)

BINDIR = Path("/opt/pg/bin")

_T = TypeVar("_T")


def never(*_: object) -> NoReturn:
    raise AssertionError("a later branch was consulted although an earlier one holds")


def answer(value: _T) -> Callable[..., _T]:
    return lambda *_, **__: value


def make_bindir(path: Path, *tools: str) -> Path:
    path.mkdir(parents=True)
    for tool in tools:
        (path / tool).touch()
    return path


# --- PostgreSQL ------------------------------------------------------------------------


@pytest.mark.unit
def test_postgres_from_the_environment_wins_over_everything() -> None:
    """FLEET_TEST_PG_DSN is used as given; nothing else is probed."""
    dsn = "postgresql://ci:secret@db.example:5433/ci"
    assert choose_postgres({"FLEET_TEST_PG_DSN": dsn}, never, never, never) == Choice("env", dsn)


@pytest.mark.unit
def test_a_running_postgres_on_5432_is_used_next() -> None:
    """Without the variable, the server on 127.0.0.1:5432 is used, with database test."""
    asked: list[tuple[str, int]] = []

    def reachable(host: str, port: int) -> bool:
        asked.append((host, port))
        return True

    assert choose_postgres({"FLEET_TEST_PG_DSN": ""}, reachable, never, never) == Choice("running", DEFAULT_PG_DSN)
    assert asked == [("127.0.0.1", 5432)]


@pytest.mark.unit
def test_with_nothing_on_5432_the_machines_binaries_start_a_private_cluster() -> None:
    """initdb/pg_ctl present: a private cluster from that directory; Docker is not asked."""
    assert choose_postgres({}, answer(False), answer(BINDIR), never) == Choice("cluster", str(BINDIR))


@pytest.mark.unit
def test_without_server_or_binaries_a_docker_engine_gives_a_container() -> None:
    """Docker simulated present: the pinned image of the oldest supported PostgreSQL."""
    choice = choose_postgres({}, answer(False), answer(None), answer(True))
    assert choice == Choice("container", POSTGRES_IMAGE)
    assert POSTGRES_IMAGE == "postgres:14-alpine"


@pytest.mark.unit
def test_with_nothing_at_all_postgres_tests_skip_naming_what_is_missing() -> None:
    """Docker simulated absent: a skip whose message names every source it tried."""
    choice = choose_postgres({}, answer(False), answer(None), answer(False))
    assert choice.branch == "skip"
    for missing in ("FLEET_TEST_PG_DSN", "127.0.0.1:5432", "initdb", "pg_ctl", "Docker"):
        assert missing in choice.value
    with pytest.raises(pytest.skip.Exception, match=r"PostgreSQL: FLEET_TEST_PG_DSN is unset"), postgres_from(choice):
        pass


@pytest.mark.unit
def test_postgres_binaries_on_path_come_first_then_the_newest_debian_version(tmp_path: Path) -> None:
    """initdb on PATH (a symlink is followed to its directory); else the highest
    numbered /usr/lib/postgresql/N/bin that has both initdb and pg_ctl."""
    lib = tmp_path / "lib"
    make_bindir(lib / "14" / "bin", "initdb", "pg_ctl")
    make_bindir(lib / "16" / "bin", "initdb", "pg_ctl")
    make_bindir(lib / "17" / "bin", "initdb")  # half-installed: no pg_ctl
    on_path = make_bindir(tmp_path / "path", "initdb", "pg_ctl")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "initdb").symlink_to(on_path / "initdb")

    assert find_postgres_bindir(answer(str(tmp_path / "bin" / "initdb")), lib) == on_path
    assert find_postgres_bindir(answer(None), lib) == lib / "16" / "bin"
    assert find_postgres_bindir(answer(None), tmp_path / "absent") is None


@pytest.mark.unit
def test_as_root_a_private_cluster_needs_the_postgres_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """initdb refuses root, so as root the cluster runs as postgres: without that
    user the branch is not available."""
    on_path = make_bindir(tmp_path / "bin", "initdb", "pg_ctl")
    monkeypatch.setattr(os, "geteuid", answer(0))

    def no_such_user(name: str) -> pwd.struct_passwd:
        raise KeyError(name)

    monkeypatch.setattr(pwd, "getpwnam", no_such_user)
    assert find_postgres_bindir(answer(str(on_path / "initdb")), tmp_path / "absent") is None


@pytest.mark.unit
def test_the_container_branch_yields_the_containers_dsn_and_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Docker: the container start is faked, the wiring around it is real."""
    stopped: list[bool] = []
    fake = ("postgresql://test:test@localhost:32768/test", lambda: stopped.append(True))
    monkeypatch.setattr(services, "pg_dsn_for_container", answer(fake))
    with postgres_from(Choice("container", POSTGRES_IMAGE)) as dsn:
        assert dsn == fake[0]
        assert not stopped
    assert stopped == [True]


# --- Mosquitto ---------------------------------------------------------------------------


@pytest.mark.unit
def test_mosquitto_from_the_environment_wins_over_everything() -> None:
    """FLEET_TEST_MQTT_URL is used as given, with or without a scheme and port."""
    url = "mqtt://broker.example:1884"
    assert choose_mosquitto({"FLEET_TEST_MQTT_URL": url}, never, never) == Choice("env", url)
    with mosquitto_from(Choice("env", url)) as address:
        assert address == ("broker.example", 1884)
    with mosquitto_from(Choice("env", "broker.example")) as address:
        assert address == ("broker.example", 1883)


@pytest.mark.unit
def test_an_installed_mosquitto_binary_is_used_next() -> None:
    """A binary: a private broker from it; Docker is not asked."""
    assert choose_mosquitto({}, answer("/usr/sbin/mosquitto"), never) == Choice("binary", "/usr/sbin/mosquitto")


@pytest.mark.unit
def test_the_mosquitto_binary_is_found_on_path_or_in_sbin(tmp_path: Path) -> None:
    """sbin is often not on a user's PATH, so Debian's place is looked at too."""
    sbin = tmp_path / "mosquitto"
    assert find_mosquitto(answer("/opt/bin/mosquitto"), [sbin]) == "/opt/bin/mosquitto"
    assert find_mosquitto(answer(None), [sbin]) is None
    sbin.touch()
    assert find_mosquitto(answer(None), [sbin]) == str(sbin)


@pytest.mark.unit
def test_without_a_binary_a_docker_engine_gives_a_container() -> None:
    """Docker simulated present: the pinned broker image."""
    assert choose_mosquitto({}, answer(None), answer(True)) == Choice("container", MOSQUITTO_IMAGE)


@pytest.mark.unit
def test_with_nothing_at_all_mqtt_tests_skip_naming_what_is_missing() -> None:
    """Docker simulated absent: a skip naming the variable, the binary and Docker."""
    choice = choose_mosquitto({}, answer(None), answer(False))
    assert choice.branch == "skip"
    for missing in ("FLEET_TEST_MQTT_URL", "mosquitto binary", "Docker"):
        assert missing in choice.value
    with pytest.raises(pytest.skip.Exception, match=r"Mosquitto: FLEET_TEST_MQTT_URL is unset"), mosquitto_from(choice):
        pass


@pytest.mark.unit
def test_the_mqtt_container_branch_yields_its_address_and_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Docker: the container start is faked, the wiring around it is real."""
    stopped: list[bool] = []
    monkeypatch.setattr(services, "mqtt_for_container", answer(("localhost", 32769, lambda: stopped.append(True))))
    with mosquitto_from(Choice("container", MOSQUITTO_IMAGE)) as address:
        assert address == ("localhost", 32769)
    assert stopped == [True]


@pytest.mark.unit
def test_broker_config_keeps_the_projects_settings_and_moves_listener_and_storage() -> None:
    """The private broker (loopback) and the container (every address) both run the
    shipped config: its queue and persistence settings survive the rewrite."""
    shipped = MOSQUITTO_CONF.read_text()
    private = broker_config(shipped, 41883, Path("/tmp/b")).splitlines()
    container = broker_config(shipped, 1883, Path("/data"), bind="").splitlines()
    assert "listener 41883 127.0.0.1" in private
    assert "listener 1883" in container
    for config in (private, container):
        assert sum(line.startswith("listener") for line in config) == 1
        assert "max_queued_messages 1500000" in config
        assert "persistence true" in config
    assert "persistence_location /data/" in container


# --- Docker --------------------------------------------------------------------------------


@pytest.mark.unit
def test_docker_counts_only_when_the_engine_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A docker client without an engine (as on this project's CI) is no Docker."""
    probe = services.docker_available.__wrapped__
    monkeypatch.setattr(shutil, "which", answer(None))
    assert probe() is False
    monkeypatch.setattr(shutil, "which", answer("/usr/bin/docker"))
    for code, expected in ((1, False), (0, True)):
        monkeypatch.setattr(subprocess, "run", answer(subprocess.CompletedProcess(["docker"], code)))
        assert probe() is expected


@pytest.mark.unit
@pytest.mark.filterwarnings("ignore:The @wait_container_is_ready decorator is deprecated:DeprecationWarning")
def test_the_testcontainers_modules_of_the_container_branch_are_installed() -> None:
    """The dev extra brings testcontainers with the PostgreSQL and Mosquitto modules,
    and the Mosquitto module still takes a config file (the project's is passed)."""
    from testcontainers.community.mqtt import MosquittoContainer
    from testcontainers.community.postgres import PostgresContainer

    assert "driver" in inspect.signature(PostgresContainer).parameters
    assert "configfile" in inspect.signature(MosquittoContainer.start).parameters


# --- the private cluster ------------------------------------------------------------------


@pytest.mark.unit
def test_the_cluster_branch_starts_a_cluster_and_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without starting PostgreSQL: the cluster is faked, the wiring around it is real."""
    events: list[str] = []

    class FakeCluster:
        def __init__(self, bindir: Path) -> None:
            events.append(f"init {bindir}")
            self.dsn = "postgresql://postgres@127.0.0.1:45432/postgres"

        def start(self) -> None:
            events.append("start")

        def close(self) -> None:
            events.append("close")

    monkeypatch.setattr(services, "PostgresCluster", FakeCluster)
    with postgres_from(Choice("cluster", str(BINDIR))) as dsn:
        assert dsn == "postgresql://postgres@127.0.0.1:45432/postgres"
        assert events == [f"init {BINDIR}", "start"]
    assert events[-1] == "close"


@pytest.mark.integration
async def test_a_private_cluster_from_the_machines_binaries_runs_the_migrations_and_leaves_nothing() -> None:
    """The cluster branch for real: initdb and pg_ctl (as user postgres when root)
    give a loopback server that the migrations run on; closing it removes its files."""
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.skip("no initdb and pg_ctl on this machine (or root without a postgres user)")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        conn = await asyncpg.connect(cluster.dsn)
        try:
            await apply_migrations(conn, "fleet")
            assert await conn.fetchval("SELECT current_setting('listen_addresses')") == "127.0.0.1"
            assert await conn.fetchval("SELECT to_regclass('fleet.meter_current_state') IS NOT NULL")
        finally:
            await conn.close()
    finally:
        cluster.close()
    assert not cluster.dir.exists()
