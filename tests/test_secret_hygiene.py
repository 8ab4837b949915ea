"""Secrets never leave the process: passwords (MQTT, database: in the DSN, in the
password variable or file) appear in no log line, error message, command output,
HTTP answer or settings repr, even when a library quotes what it was given."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
import structlog

from bridge import clock
from bridge.config import Dsn, load_settings, redact_dsn
from bridge.errors import ConfigError
from bridge.logs import configure_logging
from bridge.redact import MASK, redact, redacting_processor, secret_values
from tests.support.helpers import BridgeProcess, meter_payload, publish, run_cli, wait_for
from tests.support.services import free_port

pytestmark = pytest.mark.clock

# Characters a password may hold but a URL must percent-encode: written raw they
# made asyncpg quote a piece of the DSN in its error message.
MALFORMED_DSNS = [
    "postgresql://u:{pw}#tail@127.0.0.1:5432/db",
    "postgresql://u:{pw}/tail@127.0.0.1:5432/db",
    "postgresql://u:{pw}?tail@127.0.0.1:5432/db",
    "postgresql://u:{pw}@tail@127.0.0.1:5432/db",
    "postgresql://u@127.0.0.1:5432/db?password={pw}&tail",
]


def marker(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex}"


def with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{password}@{host}"))


# --- unit ---------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("template", MALFORMED_DSNS)
def test_a_malformed_dsn_is_refused_without_showing_its_password(template: str) -> None:
    """A DSN whose password holds a raw # / ? @ or & is a configuration error that
    names the key but not the password; its repr hides the password too."""
    dsn = template.format(pw="hunter2")
    with pytest.raises(ConfigError, match="FLEET_BRIDGE_DB_DSN") as raised:
        load_settings(environ={"FLEET_BRIDGE_DB_DSN": dsn})
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in repr(Dsn(dsn))
    assert "tail" not in redact_dsn(dsn)


@pytest.mark.unit
@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p%23w@db.example:5432/fleet?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem",
        "postgresql://u@h1:5432,h2:5433/fleet?target_session_attrs=read-write",
        "postgresql://[::1]:5432/fleet",
        "postgresql:///fleet?host=/run/postgresql",
    ],
)
def test_well_formed_dsns_stay_accepted(dsn: str) -> None:
    """Percent-encoded passwords, host lists, IPv6 and TLS parameters pass the check."""
    assert load_settings(environ={"FLEET_BRIDGE_DB_DSN": dsn}).db.dsn.reveal() == dsn


@pytest.mark.unit
def test_every_configured_password_is_masked(tmp_path: Path) -> None:
    """secret_values finds the MQTT password, the database password from its file,
    and the DSN's (as written and decoded); redact and the log processor mask them."""
    db_file = tmp_path / "db-password"
    db_file.write_text("from-file-pw\n")
    settings = load_settings(
        environ={
            "FLEET_BRIDGE_MQTT_PASSWORD": "mqtt-pw",
            "FLEET_BRIDGE_DB_PASSWORD_FILE": str(db_file),
            "FLEET_BRIDGE_DB_DSN": "postgresql://u:dsn%2Fpw@h/db",
        }
    )
    found = secret_values(settings)
    assert set(found) == {"mqtt-pw", "from-file-pw", "dsn%2Fpw", "dsn/pw"}
    text = "mqtt-pw from-file-pw dsn%2Fpw dsn/pw"
    assert redact(text, found) == " ".join([MASK] * 4)
    event = redacting_processor(found)(None, "warning", {"event": "x", "error": f"bad: {text}", "n": 1})
    assert event == {"event": "x", "error": "bad: " + " ".join([MASK] * 4), "n": 1}


@pytest.mark.unit
def test_log_lines_mask_a_secret_quoted_by_a_library(capsys: pytest.CaptureFixture[str]) -> None:
    """configure_logging with secrets masks them in every rendered line."""
    configure_logging("info", "json", ("s3cr3t-value",))
    try:
        structlog.get_logger("test").warning("db_check_failed", error="auth failed for s3cr3t-value")
    finally:
        structlog.reset_defaults()  # its stream is capsys's, closed after this test
    err = capsys.readouterr().err
    assert "s3cr3t-value" not in err
    assert MASK in err


# --- everything a run produces --------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
async def test_no_output_of_the_daemon_or_the_commands_contains_a_password(
    start_bridge: Callable[..., BridgeProcess],
    bridge_env: dict[str, str],
    broker: tuple[str, int],
    db: asyncpg.Connection,
    schema: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    """With unique marker passwords for MQTT and the database (in the DSN, in
    FLEET_BRIDGE_DB_PASSWORD and in FLEET_BRIDGE_DB_PASSWORD_FILE), the daemon
    (working, and with both links down), check, migrate, partitions, status, config
    and configuration errors produce output in which no marker appears: log files,
    stdout, stderr, /metrics, /readyz, /healthz and the settings' repr."""
    mqtt_pw, dsn_pw, db_pw, file_pw = (marker(w) for w in ("mqttpw", "dsnpw", "dbpw", "filepw"))
    password_file = tmp_path / "db-password"
    password_file.write_text(file_pw + "\n")
    dsn = with_password(bridge_env["FLEET_BRIDGE_DB_DSN"], dsn_pw)
    secret_env = {
        **bridge_env,
        "FLEET_BRIDGE_DB_DSN": dsn,
        "FLEET_BRIDGE_DB_PASSWORD": db_pw,
        "FLEET_BRIDGE_MQTT_USERNAME": "hygiene",
        "FLEET_BRIDGE_MQTT_PASSWORD": mqtt_pw,
    }
    file_env = {k: v for k, v in secret_env.items() if k != "FLEET_BRIDGE_DB_PASSWORD"}
    file_env["FLEET_BRIDGE_DB_PASSWORD_FILE"] = str(password_file)
    closed = str(free_port())
    down_dsn = with_password(f"postgresql://postgres@127.0.0.1:{closed}/test", dsn_pw)
    outputs: dict[str, str] = {}

    # The daemon at work: a reading and a reject go through, then every endpoint.
    bridge = start_bridge(**secret_env)
    await bridge.wait_ready()
    host, port = broker
    publish(host, port, [(f"{prefix}meter/M1", meter_payload(clock.now())), (f"{prefix}meter/M1", b"{oops")])

    async def both_stored() -> bool:
        return bridge.metric("fleet_bridge_messages_received_total") == 2 and bool(
            await db.fetchval(f'SELECT count(*) FROM "{schema}".ingest_rejects')
        )

    await wait_for(both_stored, timeout=30, what="a reading and a reject")
    for path in ("/metrics", "/readyz", "/healthz"):
        outputs[f"working daemon {path}"] = bridge.http_get(path)[1]
    bridge.stop()

    # The daemon with both links down: it logs why, over and over.
    down = start_bridge(**{**file_env, "FLEET_BRIDGE_MQTT_PORT": closed, "FLEET_BRIDGE_DB_DSN": down_dsn})

    async def complained() -> bool:
        logs = down.logs()
        return "mqtt_disconnected" in logs and "db_check_failed" in logs

    await wait_for(complained, timeout=30, what="connection errors in the log")
    outputs["down daemon /readyz"] = down.http_get("/readyz")[1]
    down.stop()

    commands = {
        "check, broker down": (["check", "--timeout", "2"], {**secret_env, "FLEET_BRIDGE_MQTT_PORT": closed}),
        "check, database down": (["check", "--timeout", "2"], {**file_env, "FLEET_BRIDGE_DB_DSN": down_dsn}),
        "migrate": (["migrate"], secret_env),
        "migrate, password file": (["migrate"], file_env),
        "migrate, database down": (["migrate"], {**secret_env, "FLEET_BRIDGE_DB_DSN": down_dsn}),
        "status": (["status", "--format", "json"], file_env),
        "config": (["config"], file_env),
        "config json": (["config", "--format", "json"], secret_env),
        "config error": (["run"], {**secret_env, "FLEET_BRIDGE_BATCH_MAX_ROWS": "many"}),
        "malformed dsn": (["migrate"], {**secret_env, "FLEET_BRIDGE_DB_DSN": MALFORMED_DSNS[0].format(pw=dsn_pw)}),
        "malformed dsn flag": (["check", "--set", f"db.dsn={MALFORMED_DSNS[4].format(pw=dsn_pw)}"], secret_env),
    }
    expected_exit = {"migrate": 0, "migrate, password file": 0, "status": 0, "config": 0, "config json": 0}
    expected_exit |= {"config error": 2, "malformed dsn": 2, "malformed dsn flag": 2}
    for name, (args, env) in commands.items():
        result = run_cli(args, env)
        assert result.returncode == expected_exit.get(name, 1), (name, result.stderr)
        outputs[f"{name} stdout"], outputs[f"{name} stderr"] = result.stdout, result.stderr
    for env in (secret_env, file_env):
        settings = load_settings(environ=env)
        outputs["settings repr"] = f"{settings!r} {settings!s} {settings.db!r} {settings.mqtt!r}"

    outputs["working daemon log"], outputs["down daemon log"] = bridge.logs(), down.logs()
    for secret in (mqtt_pw, dsn_pw, db_pw, file_pw):
        for form in {secret, quote(secret, safe="")}:
            leaks = [name for name, text in outputs.items() if form in text]
            assert not leaks, f"{secret} found in {leaks}"
