"""The broker link secured as shipped: Mosquitto from deploy/mosquitto/mosquitto-tls.conf
(TLS listener, password file, the acl file), certificates made by the test. The
bridge verifies the broker, logs in, says why when it cannot, and devices may
publish only to their own topic."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge import clock
from bridge.config import load_settings
from bridge.errors import ConfigError
from tests.support.helpers import BridgeProcess, meter_payload, run_cli, wait_for
from tests.support.security_helpers import device_publish, mosquitto_password_entry
from tests.support.services import ROOT, MosquittoProcess
from tests.support.tls_certs import CertificateAuthority, openssl_available

pytestmark = pytest.mark.clock

MOSQUITTO_DIR = ROOT / "deploy" / "mosquitto"
PASSWORDS = {user: secrets.token_urlsafe(16) for user in ("fleet-bridge", "MTR-1", "MTR-2", "fleet-loadgen")}
# The acl's commented-out block for a load generator on a test broker.
LOADGEN_ACL = "# user fleet-loadgen\n# topic write meter/+\n# topic write vehicle/+\n"


@dataclasses.dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    other_ca: Path
    server: tuple[Path, Path]  # names localhost and 127.0.0.1
    misnamed_server: tuple[Path, Path]  # names broker.invalid only
    client: tuple[Path, Path]
    passwords: Path
    acl_with_loadgen: Path


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    openssl_available()
    # Mosquitto started as root reads its files as the user mosquitto: world-readable.
    directory = Path(tempfile.mkdtemp(prefix="fleet-pki-"))
    ca = CertificateAuthority(directory, "ca")
    passwords = directory / "passwords"
    passwords.write_text("".join(mosquitto_password_entry(u, p) + "\n" for u, p in PASSWORDS.items()))
    acl = (MOSQUITTO_DIR / "acl").read_text()
    assert LOADGEN_ACL in acl
    acl_with_loadgen = directory / "acl-with-loadgen"
    acl_with_loadgen.write_text(acl.replace(LOADGEN_ACL, LOADGEN_ACL.replace("# ", "")))
    made = Pki(
        dir=directory,
        ca=ca.cert,
        other_ca=CertificateAuthority(directory / "other", "other-ca").cert,
        server=ca.issue("server", hosts=("localhost", "127.0.0.1")),
        misnamed_server=ca.issue("misnamed", hosts=("broker.invalid",)),
        client=ca.issue("fleet-bridge", client=True),
        passwords=passwords,
        acl_with_loadgen=acl_with_loadgen,
    )
    for path in [directory, *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield made
    shutil.rmtree(directory, ignore_errors=True)


def secure_config(pki: Pki, server: tuple[Path, Path], *, require_certificate: bool, acl: Path) -> tuple[str, str]:
    """The shipped TLS config with the test's files, split into the part before the
    listener and the listener's own lines (MosquittoProcess moves the listener)."""
    text = (MOSQUITTO_DIR / "mosquitto-tls.conf").read_text()
    for shipped, local in {
        "/etc/mosquitto/passwords": pki.passwords,
        "/etc/mosquitto/acl": acl,
        "/etc/mosquitto/certs/ca.crt": pki.ca,
        "/etc/mosquitto/certs/server.crt": server[0],
        "/etc/mosquitto/certs/server.key": server[1],
    }.items():
        assert shipped in text
        text = text.replace(shipped, str(local))
    if require_certificate:
        text = text.replace("#require_certificate true", "require_certificate true")
    before, listener, own_lines = text.partition("\nlistener 8883\n")
    assert listener, "the TLS listener must be the last section of mosquitto-tls.conf"
    return before, own_lines


@pytest.fixture
def secure_broker(private_broker_with: Callable[..., MosquittoProcess], pki: Pki) -> Callable[..., MosquittoProcess]:
    """``secure_broker(server, require_certificate=..., acl=...)`` starts a private TLS broker."""

    def start(
        server: tuple[Path, Path] | None = None, *, require_certificate: bool = False, acl: Path = MOSQUITTO_DIR / "acl"
    ) -> MosquittoProcess:
        before, listener = secure_config(pki, server or pki.server, require_certificate=require_certificate, acl=acl)
        return private_broker_with(listener, config_text=before)

    return start


def tls_env(broker: MosquittoProcess, ca: Path, **extra: str) -> dict[str, str]:
    """Bridge settings for the secure broker: TLS with ``ca``, the bridge's password."""
    return {
        "FLEET_BRIDGE_MQTT_HOST": "127.0.0.1",
        "FLEET_BRIDGE_MQTT_PORT": str(broker.port),
        "FLEET_BRIDGE_MQTT_TOPIC_PREFIX": "",  # the acl names the topics without one
        "FLEET_BRIDGE_MQTT_USERNAME": "fleet-bridge",
        "FLEET_BRIDGE_MQTT_PASSWORD": PASSWORDS["fleet-bridge"],
        "FLEET_BRIDGE_MQTT_TLS_CA_FILE": str(ca),
        **extra,
    }


def log_events(bridge: BridgeProcess, event: str) -> list[dict[str, object]]:
    lines = [orjson.loads(line) for line in bridge.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


async def stored_meters(db: asyncpg.Connection, schema: str) -> set[str]:
    return {r[0] for r in await db.fetch(f'SELECT meter_id FROM "{schema}".meter_telemetry_history')}


# --- settings -----------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("setting", ["TLS_INSECURE", "TLS_CERT_FILE"])
def test_tls_options_without_a_ca_file_are_configuration_errors(setting: str, tmp_path: Path) -> None:
    """TLS is on only with a CA file, so tls_insecure or a client certificate
    without one is refused (a client certificate would otherwise go unused, over
    plain TCP), naming the missing setting."""
    pem = tmp_path / "client.pem"
    pem.write_text("")
    environ = {"FLEET_BRIDGE_MQTT_TLS_INSECURE": "true"}
    if setting == "TLS_CERT_FILE":
        environ = {"FLEET_BRIDGE_MQTT_TLS_CERT_FILE": str(pem), "FLEET_BRIDGE_MQTT_TLS_KEY_FILE": str(pem)}
    with pytest.raises(ConfigError, match="FLEET_BRIDGE_MQTT_TLS_CA_FILE"):
        load_settings(environ=environ)


def directives(path: Path, leave_out: set[str]) -> list[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#") and line.split()[0] not in leave_out]


@pytest.mark.unit
def test_tls_config_differs_from_the_plain_one_only_in_listener_and_authentication() -> None:
    """mosquitto-tls.conf keeps every persistence, queue and logging setting of
    mosquitto.conf, so the outage sizing holds for a secured broker too."""
    auth = {"listener", "allow_anonymous", "password_file", "acl_file", "cafile", "certfile", "keyfile"}
    assert directives(MOSQUITTO_DIR / "mosquitto-tls.conf", auth) == directives(MOSQUITTO_DIR / "mosquitto.conf", auth)
    assert "allow_anonymous false" in directives(MOSQUITTO_DIR / "mosquitto-tls.conf", set())


# --- the bridge against the secured broker ------------------------------------------


@pytest.mark.integration
async def test_bridge_ingests_over_tls_with_a_password_from_a_file(
    secure_broker: Callable[..., MosquittoProcess],
    start_bridge: Callable[..., BridgeProcess],
    pki: Pki,
    db: asyncpg.Connection,
    schema: str,
    tmp_path: Path,
) -> None:
    """With the CA and its password (from FLEET_BRIDGE_MQTT_PASSWORD_FILE) the
    bridge connects, checking the broker's name, and stores a device's reading."""
    broker = secure_broker()
    password_file = tmp_path / "mqtt-password"
    password_file.write_text(PASSWORDS["fleet-bridge"] + "\n")
    env = tls_env(broker, pki.ca, FLEET_BRIDGE_MQTT_PASSWORD_FILE=str(password_file))
    del env["FLEET_BRIDGE_MQTT_PASSWORD"]
    bridge = start_bridge(**env)
    await bridge.wait_ready()

    [reason] = device_publish(
        broker.port, "MTR-1", PASSWORDS["MTR-1"], pki.ca, [("meter/MTR-1", meter_payload(clock.now()))]
    )
    assert not reason.is_failure, reason

    async def stored() -> bool:
        return await stored_meters(db, schema) == {"MTR-1"}

    await wait_for(stored, timeout=30, what="the reading sent over TLS")
    assert not log_events(bridge, "mqtt_tls_insecure")


@pytest.mark.integration
async def test_a_broker_certificate_from_another_ca_is_refused_and_the_reason_shown(
    secure_broker: Callable[..., MosquittoProcess],
    start_bridge: Callable[..., BridgeProcess],
    bridge_env: dict[str, str],
    pki: Pki,
    db: asyncpg.Connection,
) -> None:
    """With a CA that did not sign the broker's certificate the daemon does not
    connect (not ready) and logs "certificate verify failed"; `fleet-bridge check`
    exits 1 with the same reason."""
    broker = secure_broker()
    env = tls_env(broker, pki.other_ca)
    bridge = start_bridge(**env)

    async def refused() -> bool:
        return bool(log_events(bridge, "mqtt_disconnected"))

    await wait_for(refused, timeout=30, what="a refused TLS connection")
    assert "certificate verify failed" in str(log_events(bridge, "mqtt_disconnected")[0]["error"])
    status, body = bridge.http_get("/readyz")
    assert status == 503
    # The database may not have been probed yet this early: only MQTT is certain.
    assert body.startswith("not ready: mqtt")

    check = run_cli(["check", "--timeout", "5"], {**bridge_env, **env})
    assert check.returncode == 1
    assert "mqtt" in check.stderr
    assert "certificate verify failed" in check.stderr


@pytest.mark.integration
async def test_the_broker_name_is_checked_unless_tls_insecure_is_set(
    secure_broker: Callable[..., MosquittoProcess],
    start_bridge: Callable[..., BridgeProcess],
    bridge_env: dict[str, str],
    pki: Pki,
    db: asyncpg.Connection,
) -> None:
    """A certificate from the right CA for another name is refused by default;
    FLEET_BRIDGE_MQTT_TLS_INSECURE=true accepts it, with a warning logged once."""
    broker = secure_broker(pki.misnamed_server)
    env = {**bridge_env, **tls_env(broker, pki.ca)}

    strict = run_cli(["check", "--timeout", "5"], env)
    assert strict.returncode == 1
    assert "mismatch" in strict.stderr, strict.stderr

    insecure = run_cli(["check", "--timeout", "5"], {**env, "FLEET_BRIDGE_MQTT_TLS_INSECURE": "true"})
    assert insecure.returncode == 0, insecure.stderr
    assert "mqtt_tls_insecure" in insecure.stderr

    bridge = start_bridge(**tls_env(broker, pki.ca, FLEET_BRIDGE_MQTT_TLS_INSECURE="true"))
    await bridge.wait_ready()
    [warning] = log_events(bridge, "mqtt_tls_insecure")
    assert warning["level"] == "warning"


@pytest.mark.integration
@pytest.mark.slow
async def test_a_wrong_password_is_reported_and_retried_with_growing_delays(
    secure_broker: Callable[..., MosquittoProcess],
    start_bridge: Callable[..., BridgeProcess],
    bridge_env: dict[str, str],
    pki: Pki,
) -> None:
    """A refused login says "Not authorized", and the daemon retries with
    exponential backoff: consecutive attempts, each delay at least the previous
    one, and a handful of attempts in seconds where a spinning loop makes hundreds.
    The broker saw no more logins than the daemon logged."""
    broker = secure_broker()
    env = tls_env(broker, pki.ca, FLEET_BRIDGE_MQTT_PASSWORD="not-the-password")
    bridge = start_bridge(**env)

    async def retried() -> bool:
        return len(log_events(bridge, "mqtt_disconnected")) >= 4

    await wait_for(retried, timeout=60, what="four refused logins")
    await asyncio.sleep(3)  # an observation window: a spinning reconnect loop would fill it
    failures = log_events(bridge, "mqtt_disconnected")
    assert all("Not authorized" in str(f["error"]) for f in failures), failures
    assert [f["attempt"] for f in failures] == list(range(1, len(failures) + 1))
    delays = [float(str(f["retry_in_s"])) for f in failures]
    assert delays == sorted(delays)
    assert len(failures) <= 8, failures
    assert broker.log.read_text().count("not authorised") <= len(failures) + 1

    check = run_cli(["check", "--timeout", "5"], {**bridge_env, **env})
    assert check.returncode == 1
    assert "Not authorized" in check.stderr


@pytest.mark.integration
async def test_a_device_may_publish_only_to_its_own_topic(
    secure_broker: Callable[..., MosquittoProcess],
    start_bridge: Callable[..., BridgeProcess],
    pki: Pki,
    db: asyncpg.Connection,
    schema: str,
) -> None:
    """The shipped acl: MTR-1 publishing as MTR-2 gets PUBACK "Not authorized" and
    the reading never reaches the bridge, while its own reading, sent after it,
    is stored. Devices cannot read other devices' readings either."""
    broker = secure_broker()
    bridge = start_bridge(**tls_env(broker, pki.ca))
    await bridge.wait_ready()
    overheard: list[str] = []
    subscribed = threading.Event()
    spy = paho.Client(CallbackAPIVersion.VERSION2, client_id="device-MTR-2-spy", protocol=paho.MQTTv5)
    spy.username_pw_set("MTR-2", PASSWORDS["MTR-2"])
    spy.tls_set(ca_certs=str(pki.ca))
    spy.on_subscribe = lambda *_: subscribed.set()
    spy.on_message = lambda _c, _u, message: overheard.append(message.topic)
    spy.connect("127.0.0.1", broker.port)
    spy.loop_start()
    try:
        spy.subscribe("meter/+", qos=1)
        assert subscribed.wait(30)
        now = clock.now()
        forged, own = device_publish(
            broker.port, "MTR-1", PASSWORDS["MTR-1"], pki.ca,
            [("meter/MTR-2", meter_payload(now)), ("meter/MTR-1", meter_payload(now))],
        )  # fmt: skip

        async def own_stored() -> bool:
            return "MTR-1" in await stored_meters(db, schema)

        await wait_for(own_stored, timeout=30, what="the device's own reading")
    finally:
        spy.disconnect()
        spy.loop_stop()
    assert (forged.getName(), forged.value) == ("Not authorized", 135)
    assert not own.is_failure
    assert await stored_meters(db, schema) == {"MTR-1"}
    assert await db.fetchval(f'SELECT count(*) FROM "{schema}".ingest_rejects') == 0
    assert bridge.metric("fleet_bridge_messages_received_total") == 1
    assert overheard == []


@pytest.mark.integration
async def test_a_client_certificate_is_presented_when_the_broker_requires_one(
    secure_broker: Callable[..., MosquittoProcess], bridge_env: dict[str, str], pki: Pki
) -> None:
    """With require_certificate on, `fleet-bridge check` connects with
    FLEET_BRIDGE_MQTT_TLS_CERT_FILE/_KEY_FILE and is refused without them."""
    broker = secure_broker(require_certificate=True)
    env = {**bridge_env, **tls_env(broker, pki.ca)}
    cert, key = pki.client

    without = run_cli(["check", "--timeout", "5"], env)
    assert without.returncode == 1
    assert "mqtt" in without.stderr

    with_cert = {**env, "FLEET_BRIDGE_MQTT_TLS_CERT_FILE": str(cert), "FLEET_BRIDGE_MQTT_TLS_KEY_FILE": str(key)}
    result = run_cli(["check", "--timeout", "5"], with_cert)
    assert result.returncode == 0, result.stderr


@pytest.mark.integration
async def test_the_load_generator_publishes_over_tls_with_a_password(
    secure_broker: Callable[..., MosquittoProcess],
    start_bridge: Callable[..., BridgeProcess],
    pki: Pki,
    db: asyncpg.Connection,
    schema: str,
    tmp_path: Path,
) -> None:
    """fleet-loadgen takes the same TLS and login options (--tls-ca-file,
    --password-file): with a write-all user of its own its readings reach the bridge."""
    broker = secure_broker(acl=pki.acl_with_loadgen)
    bridge = start_bridge(**tls_env(broker, pki.ca))
    await bridge.wait_ready()
    password_file = tmp_path / "loadgen-password"
    password_file.write_text(PASSWORDS["fleet-loadgen"])
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "loadgen", "run", "--devices", "2", "--interval", "60", "--duration", "5m",
         "--as-fast-as-possible", "--out", str(tmp_path), "--host", "127.0.0.1", "--port", str(broker.port),
         "--username", "fleet-loadgen", "--password-file", str(password_file), "--tls-ca-file", str(pki.ca),
         "--topic-prefix", ""],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    published: int = orjson.loads((tmp_path / "summary.json").read_bytes())["published"]
    assert published == 2 * 2 * 5  # pairs x streams x readings

    async def all_stored() -> bool:
        return bridge.metric("fleet_bridge_rows_written_total") == published

    await wait_for(all_stored, timeout=60, what="the load generator's readings")
