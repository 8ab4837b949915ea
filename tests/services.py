"""Where the tests get PostgreSQL and Mosquitto from, in this order:

1. services named by the environment (``FLEET_TEST_PG_DSN``, ``FLEET_TEST_MQTT_URL``);
2. the machine's own binaries: the running PostgreSQL, and a private ``mosquitto``
   started with the project's ``deploy/mosquitto/mosquitto.conf`` on a free port;
3. testcontainers, when a Docker engine answers;
4. otherwise a skip whose message names what is missing.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
# Pinned images for the testcontainers branch: the oldest versions we support.
POSTGRES_IMAGE = "postgres:15-alpine"
MOSQUITTO_IMAGE = "eclipse-mosquitto:2.0.18"


@dataclasses.dataclass(frozen=True)
class Choice:
    """Which branch of the chain provides a service; ``value`` is its address."""

    branch: str  # "env", "binary", "container" or "skip"
    value: str


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def docker_available() -> bool:
    """True when a Docker engine answers (not merely when the client is installed)."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def choose_postgres(
    environ: Mapping[str, str], reachable: Callable[[str, int], bool], docker: Callable[[], bool]
) -> Choice:
    if environ.get("FLEET_TEST_PG_DSN"):
        return Choice("env", environ["FLEET_TEST_PG_DSN"])
    parts = urlsplit(DEFAULT_PG_DSN)
    if reachable(parts.hostname or "127.0.0.1", parts.port or 5432):
        return Choice("binary", DEFAULT_PG_DSN)
    if docker():
        return Choice("container", POSTGRES_IMAGE)
    return Choice(
        "skip",
        "PostgreSQL: FLEET_TEST_PG_DSN is unset, nothing listens on 127.0.0.1:5432 and Docker is not available",
    )


def choose_mosquitto(
    environ: Mapping[str, str], which: Callable[[str], str | None], docker: Callable[[], bool]
) -> Choice:
    if environ.get("FLEET_TEST_MQTT_URL"):
        return Choice("env", environ["FLEET_TEST_MQTT_URL"])
    binary = which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None
    )
    if binary:
        return Choice("binary", binary)
    if docker():
        return Choice("container", MOSQUITTO_IMAGE)
    return Choice(
        "skip", "Mosquitto: FLEET_TEST_MQTT_URL is unset, no mosquitto binary on PATH and Docker is not available"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def broker_config(base: str, port: int, data_dir: Path, extra: str = "") -> str:
    """The project's broker config, rewritten to listen privately on ``port``."""
    kept = []
    for line in base.splitlines():
        word = line.split(maxsplit=1)[0] if line.strip() and not line.lstrip().startswith("#") else ""
        if word in ("listener", "persistence_location", "pid_file", "log_dest"):
            continue
        kept.append(line)
    kept += [f"listener {port} 127.0.0.1", f"persistence_location {data_dir}/", "log_dest stderr", extra]
    return "\n".join(kept) + "\n"


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
        self.config.write_text(broker_config(base, self.port, self.dir, extra_config))
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


def pg_dsn_for_container() -> tuple[str, Callable[[], None]]:  # pragma: no cover - needs Docker
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(POSTGRES_IMAGE, driver=None).start()
    return container.get_connection_url(), container.stop


def mqtt_for_container() -> tuple[str, int, Callable[[], None]]:  # pragma: no cover - needs Docker
    from testcontainers.mqtt import MosquittoContainer

    container = MosquittoContainer(MOSQUITTO_IMAGE).start()
    return container.get_container_host_ip(), int(container.get_exposed_port(1883)), container.stop


def env_mqtt_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 1883
