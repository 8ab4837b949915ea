"""Where the tests get PostgreSQL and Mosquitto from, in this order:

1. services named by the environment (``FLEET_TEST_PG_DSN``, ``FLEET_TEST_MQTT_URL``);
2. the machine's own: the PostgreSQL listening on 127.0.0.1:5432, else a private
   cluster started from the machine's ``initdb``/``pg_ctl``; a private ``mosquitto``
   started with the project's ``deploy/mosquitto/mosquitto.conf`` on a free port;
3. testcontainers, when a Docker engine answers;
4. otherwise a skip whose message names what is missing.

``choose_postgres`` and ``choose_mosquitto`` only decide, from what they are handed
(tests/test_services.py checks each branch with fakes); ``postgres_from`` and
``mosquitto_from`` start and stop what was chosen, for the fixtures in conftest.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
# Pinned images for the testcontainers branch: the oldest PostgreSQL we support (so
# that newer-only SQL fails here too), and the broker of deploy/compose.yaml.
POSTGRES_IMAGE = "postgres:14-alpine"
MOSQUITTO_IMAGE = "eclipse-mosquitto:2.0.18"
# Debian and Ubuntu keep the server binaries off PATH, one directory per version.
POSTGRES_LIB = Path("/usr/lib/postgresql")
SBIN = (Path("/usr/sbin/mosquitto"), Path("/usr/local/sbin/mosquitto"))


@dataclasses.dataclass(frozen=True)
class Choice:
    """Which branch of the chain provides a service, and what that branch needs.

    PostgreSQL: "env" (value: DSN), "running" (DSN), "cluster" (directory of
    initdb/pg_ctl), "container" (image). Mosquitto: "env" (URL), "binary" (path),
    "container" (image). Either: "skip" (value: what is missing).
    """

    branch: str
    value: str


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@functools.cache
def docker_available() -> bool:
    """True when a Docker engine answers (not merely when the client is installed)."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def find_postgres_bindir(which: Callable[[str], str | None] = shutil.which, lib: Path = POSTGRES_LIB) -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (PATH first, then the newest of
    Debian's versioned directories), if a private cluster can be started from it:
    ``initdb`` refuses to run as root, so root also needs a ``postgres`` user."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None
    on_path = which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    if lib.is_dir():
        versions = [d for d in lib.iterdir() if d.name.isdigit()]
        candidates += [d / "bin" for d in sorted(versions, key=lambda d: int(d.name), reverse=True)]
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "pg_ctl").is_file()), None)


def choose_postgres(
    environ: Mapping[str, str],
    reachable: Callable[[str, int], bool],
    bindir: Callable[[], Path | None],
    docker: Callable[[], bool],
) -> Choice:
    if environ.get("FLEET_TEST_PG_DSN"):
        return Choice("env", environ["FLEET_TEST_PG_DSN"])
    parts = urlsplit(DEFAULT_PG_DSN)
    if reachable(parts.hostname or "127.0.0.1", parts.port or 5432):
        return Choice("running", DEFAULT_PG_DSN)
    found = bindir()
    if found is not None:
        return Choice("cluster", str(found))
    if docker():
        return Choice("container", POSTGRES_IMAGE)
    return Choice(
        "skip",
        "PostgreSQL: FLEET_TEST_PG_DSN is unset, nothing listens on 127.0.0.1:5432, no initdb and pg_ctl"
        " to start a private cluster (as root they also need a 'postgres' user) and Docker is not available",
    )


def find_mosquitto(which: Callable[[str], str | None] = shutil.which, places: Iterable[Path] = SBIN) -> str | None:
    """The ``mosquitto`` binary: on PATH, or where Debian installs it (sbin is often
    not on a user's PATH)."""
    return which("mosquitto") or next((str(p) for p in places if p.is_file()), None)


def choose_mosquitto(
    environ: Mapping[str, str], binary: Callable[[], str | None], docker: Callable[[], bool]
) -> Choice:
    if environ.get("FLEET_TEST_MQTT_URL"):
        return Choice("env", environ["FLEET_TEST_MQTT_URL"])
    found = binary()
    if found:
        return Choice("binary", found)
    if docker():
        return Choice("container", MOSQUITTO_IMAGE)
    return Choice(
        "skip", "Mosquitto: FLEET_TEST_MQTT_URL is unset, no mosquitto binary installed and Docker is not available"
    )


# Below the kernel's ephemeral range (32768-60999 on Linux): a port asked of the
# kernel with bind(0) comes from that range, and between choosing it and the
# daemon or broker binding it, an outgoing connection of another test may take it
# as its source port.
LISTEN_PORTS = range(20000, 32768)


def free_port() -> int:
    """A port no one listens on now, outside the ephemeral range."""
    for port in random.sample(LISTEN_PORTS, 200):
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS.start}-{LISTEN_PORTS.stop - 1}")


def broker_config(base: str, port: int, data_dir: Path, extra: str = "", *, bind: str = "127.0.0.1") -> str:
    """The project's broker config, rewritten to listen on ``port`` of ``bind`` (every
    address when empty) and to keep its persistence file in ``data_dir``."""
    kept = []
    for line in base.splitlines():
        word = line.split(maxsplit=1)[0] if line.strip() and not line.lstrip().startswith("#") else ""
        if word in ("listener", "persistence_location", "pid_file", "log_dest"):
            continue
        kept.append(line)
    kept += [f"listener {port} {bind}".rstrip(), f"persistence_location {data_dir}/", "log_dest stderr", extra]
    return "\n".join(kept) + "\n"


# Config lines naming a file the broker reads after it dropped root for its own user.
FILE_OPTIONS = frozenset({"acl_file", "password_file", "cafile", "certfile", "keyfile"})


def with_readable_copies(config: str, directory: Path) -> str:
    """``config`` with every file it names copied into ``directory``, readable by all.

    Started as root, mosquitto drops to the user ``mosquitto`` before it opens its
    acl, password and certificate files: a file inside a private checkout (a clone
    in a mode-0700 directory or a home directory) would be out of its reach.
    """
    lines = []
    for number, line in enumerate(config.splitlines()):
        option, _, value = line.strip().partition(" ")
        if option in FILE_OPTIONS and value.strip():
            source = Path(value.strip())
            copy = directory / f"{number:03d}-{source.name}"
            shutil.copyfile(source, copy)
            copy.chmod(0o644)
            line = f"{option} {copy}"
        lines.append(line)
    return "\n".join(lines) + "\n"


class MosquittoProcess:
    """A private broker from the machine's binary, restartable by fault tests."""

    def __init__(self, binary: str, *, extra_config: str = "", config_text: str | None = None) -> None:
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-mosquitto-"))
        # Started as root, mosquitto drops to its own user: it must be able to write
        # its persistence file here, or a restart silently loses every queue.
        self.dir.chmod(0o777)
        base = config_text if config_text is not None else MOSQUITTO_CONF.read_text()
        self.config = self.dir / "mosquitto.conf"
        self.config.write_text(with_readable_copies(broker_config(base, self.port, self.dir, extra_config), self.dir))
        self.log = self.dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - the child process owns it
        self._proc = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while not tcp_open(self.host, self.port, 0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Clean shutdown (SIGTERM): mosquitto saves its persistence file."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
            self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class _RunAs(TypedDict, total=False):
    """The identity ``subprocess.run`` switches to for the cluster's tools."""

    user: int
    group: int
    extra_groups: list[int]


class PostgresCluster:
    """A private PostgreSQL from the machine's binaries: a throwaway data directory,
    trust authentication, 127.0.0.1 on a free port. As root it belongs to and runs as
    the user ``postgres`` (``initdb`` refuses root)."""

    def __init__(self, bindir: Path, server_settings: Mapping[str, str] | None = None) -> None:
        self.bindir = bindir
        self.server_settings = dict(server_settings or {})
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-postgres-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self._as: _RunAs = {}
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        result = subprocess.run(
            command, cwd=self.dir, capture_output=True, text=True, timeout=120, check=False, **self._as
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr[-2000:]}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "-N")
        # Throwaway data: nothing needs to survive a crash, so no fsync.
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c full_page_writes=off"
        options += "".join(f" -c {name}={value}" for name, value in self.server_settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def pg_dsn_for_container() -> tuple[str, Callable[[], None]]:
    from testcontainers.community.postgres import PostgresContainer

    container = PostgresContainer(POSTGRES_IMAGE, driver=None).start()
    return container.get_connection_url(), container.stop


def mqtt_for_container() -> tuple[str, int, Callable[[], None]]:
    """A broker container with the project's config (listening on every address of
    the container, persistence on the tmpfs the module mounts at /data)."""
    from testcontainers.community.mqtt import MosquittoContainer

    config_dir = Path(tempfile.mkdtemp(prefix="fleet-mosquitto-container-"))
    config = config_dir / "mosquitto.conf"
    config.write_text(broker_config(MOSQUITTO_CONF.read_text(), 1883, Path("/data"), bind=""))
    config.chmod(0o644)  # read by the container's own mosquitto user
    container = MosquittoContainer(MOSQUITTO_IMAGE).start(configfile=str(config))

    def stop() -> None:
        container.stop()
        shutil.rmtree(config_dir, ignore_errors=True)

    return container.get_container_host_ip(), int(container.get_exposed_port(1883)), stop


def env_mqtt_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 1883


@contextlib.contextmanager
def postgres_from(choice: Choice) -> Iterator[str]:
    """The DSN of the PostgreSQL ``choice`` names, started (and stopped) if it is ours."""
    if choice.branch == "skip":
        pytest.skip(choice.value)
    if choice.branch == "cluster":
        cluster = PostgresCluster(Path(choice.value))
        try:
            cluster.start()
            yield cluster.dsn
        finally:
            cluster.close()
    elif choice.branch == "container":
        dsn, stop = pg_dsn_for_container()
        try:
            yield dsn
        finally:
            stop()
    else:
        yield choice.value


@contextlib.contextmanager
def mosquitto_from(choice: Choice) -> Iterator[tuple[str, int]]:
    """Host and port of the broker ``choice`` names, started (and stopped) if it is ours."""
    if choice.branch == "skip":
        pytest.skip(choice.value)
    if choice.branch == "binary":
        proc = MosquittoProcess(choice.value)
        try:
            proc.start()
            yield proc.host, proc.port
        finally:
            proc.close()
    elif choice.branch == "container":
        host, port, stop = mqtt_for_container()
        try:
            yield host, port
        finally:
            stop()
    else:
        yield env_mqtt_address(choice.value)
