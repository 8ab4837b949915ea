"""Settings: precedence, validation errors that name the key, secrets kept out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.commands.cli import main
from bridge.config import Settings, load_settings, redact_dsn, unknown_variables
from bridge.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_match_the_contract() -> None:
    """With nothing set, the contract's defaults apply."""
    s = load_settings(environ={})
    assert s.db.dsn.reveal() == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert (s.db.schema, s.db.pool_max) == ("fleet", 4)
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.client_id, s.mqtt.topic_prefix) == ("127.0.0.1", 1883, "fleet-bridge", "")
    assert s.mqtt.shared_group is None
    assert (s.batch.max_rows, s.batch.max_delay_ms) == (2000, 100)
    assert (s.metrics.host, s.metrics.port) == ("0.0.0.0", 9464)
    assert (s.partitions.premake_days, s.partitions.retention_days) == (7, 400)
    assert (s.validation.max_future_skew_s, s.validation.max_payload_bytes) == (300, 4096)
    assert s.log.level == "info"


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    """A flag beats the environment, which beats the TOML file."""
    config = tmp_path / "bridge.toml"
    config.write_text('[batch]\nmax_rows = 10\nmax_delay_ms = 50\n[mqtt]\nhost = "broker"\n')
    s = load_settings(str(config), environ={"FLEET_BRIDGE_BATCH_MAX_ROWS": "20"}, overrides={"mqtt.host": "flag-host"})
    assert (s.batch.max_rows, s.batch.max_delay_ms, s.mqtt.host) == (20, 50, "flag-host")


def test_config_file_from_environment(tmp_path: Path) -> None:
    """FLEET_BRIDGE_CONFIG names the file when --config is not given."""
    config = tmp_path / "bridge.toml"
    config.write_text('[db]\nschema = "site_a"\n')
    assert load_settings(environ={"FLEET_BRIDGE_CONFIG": str(config)}).db.schema == "site_a"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"FLEET_BRIDGE_BATCH_MAX_ROWS": "many"}, "FLEET_BRIDGE_BATCH_MAX_ROWS"),
        ({"FLEET_BRIDGE_BATCH_MAX_ROWS": "0"}, "FLEET_BRIDGE_BATCH_MAX_ROWS"),
        ({"FLEET_BRIDGE_MQTT_PORT": "70000"}, "FLEET_BRIDGE_MQTT_PORT"),
        ({"FLEET_BRIDGE_DB_SCHEMA": 'x"; DROP'}, "FLEET_BRIDGE_DB_SCHEMA"),
        ({"FLEET_BRIDGE_MQTT_TOPIC_PREFIX": "site/#/"}, "FLEET_BRIDGE_MQTT_TOPIC_PREFIX"),
        ({"FLEET_BRIDGE_LOG_LEVEL": "loud"}, "FLEET_BRIDGE_LOG_LEVEL"),
        ({"FLEET_BRIDGE_MQTT_TLS_CA_FILE": "/nonexistent/ca.pem"}, "FLEET_BRIDGE_MQTT_TLS_CA_FILE"),
        ({"FLEET_BRIDGE_DB_DSN": "mysql://x"}, "FLEET_BRIDGE_DB_DSN"),
        ({"FLEET_BRIDGE_MQTT_TLS_INSECURE": "perhaps"}, "FLEET_BRIDGE_MQTT_TLS_INSECURE"),
    ],
)
def test_bad_values_name_the_key(environ: dict[str, str], named: str) -> None:
    """Each invalid value raises ConfigError whose message names the variable."""
    with pytest.raises(ConfigError, match=named):
        load_settings(environ=environ)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[db]\ndsn = "mysql://x"\n', "db.dsn in {file}"),
        ("[batch]\nmax_rows = 0\n", "batch.max_rows in {file}"),
        ("[mqtt]\ntls_insecure = true\n", "mqtt.tls_insecure in {file}"),
    ],
)
def test_a_bad_value_from_the_file_names_the_key_and_the_file(toml: str, named: str, tmp_path: Path) -> None:
    """A value set in the TOML file is reported as that key of that file, not as the
    environment variable that could also have set it."""
    config = tmp_path / "bridge.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as raised:
        load_settings(str(config), environ={})
    assert named.format(file=config) in str(raised.value)
    assert "FLEET_BRIDGE_DB_DSN" not in str(raised.value)


def test_a_bad_flag_names_the_flag() -> None:
    """A value given with --set is reported as that flag."""
    with pytest.raises(ConfigError, match=r"invalid setting --set batch\.max_rows: must be between 1 and 20000"):
        load_settings(environ={"FLEET_BRIDGE_BATCH_MAX_ROWS": "10"}, overrides={"batch.max_rows": "0"})
    with pytest.raises(ConfigError, match=r"unknown setting --set batch\.max_rowz \(did you mean batch\.max_rows\?\)"):
        load_settings(environ={}, overrides={"batch.max_rowz": "10"})


def test_unknown_keys_in_the_file_are_errors_naming_the_closest_key(tmp_path: Path) -> None:
    """A typo in the TOML file is reported, not silently ignored, with the key it
    most likely meant."""
    config = tmp_path / "bridge.toml"
    config.write_text("[batch]\nmax_rowz = 10\n")
    with pytest.raises(ConfigError, match=r"batch\.max_rowz in .* \(did you mean batch\.max_rows\?\)"):
        load_settings(str(config), environ={})
    config.write_text("[bach]\nmax_rows = 10\n")
    with pytest.raises(ConfigError, match=r"unknown section \[bach\] in .* \(did you mean batch\?\)"):
        load_settings(str(config), environ={})


def test_unknown_variables_are_found_with_the_setting_they_most_likely_meant() -> None:
    """A FLEET_BRIDGE_* variable that is no setting is listed with the closest
    setting's variable; the settings file and the tests' clock are not settings
    but known, so not listed."""
    environ = {
        "FLEET_BRIDGE_BATCH_MAXROWS": "500",
        "FLEET_BRIDGE_SOMETHING_ELSE": "1",
        "FLEET_BRIDGE_CONFIG": "bridge.toml",
        "FLEET_BRIDGE_TEST_CLOCK": "2026-11-27T12:00:00Z",
        "FLEET_BRIDGE_BATCH_MAX_ROWS": "500",
        "OTHER_BATCH_MAXROWS": "500",
    }
    assert unknown_variables(environ) == [
        ("FLEET_BRIDGE_BATCH_MAXROWS", "FLEET_BRIDGE_BATCH_MAX_ROWS"),
        ("FLEET_BRIDGE_SOMETHING_ELSE", None),
    ]


def test_a_misspelled_variable_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command logs one warning per unknown variable, naming the closest
    setting, and goes on with the rest (the variable is ignored)."""
    monkeypatch.setenv("FLEET_BRIDGE_BATCH_MAXROWS", "500")
    monkeypatch.setenv("FLEET_BRIDGE_LOG_FORMAT", "json")
    assert main(["config", "--format", "json"]) == 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "unknown_variable" in line]
    assert '"variable": "FLEET_BRIDGE_BATCH_MAXROWS"' in warning
    assert '"did_you_mean": "FLEET_BRIDGE_BATCH_MAX_ROWS"' in warning


def test_secrets_never_show_in_repr() -> None:
    """repr of the settings hides the MQTT password and the DSN's password."""
    s = load_settings(
        environ={
            "FLEET_BRIDGE_MQTT_PASSWORD": "hunter2-mqtt",
            "FLEET_BRIDGE_DB_DSN": "postgresql://ingest:hunter2-db@db:5432/fleet",
        }
    )
    text = repr(s) + str(s)
    assert "hunter2" not in text
    assert s.mqtt_password() == "hunter2-mqtt"
    assert redact_dsn("postgresql://u:pw@h/db") == "postgresql://u:**********@h/db"
    assert "secret" not in redact_dsn("host=h password=secret dbname=x")


def test_password_file_is_read_and_stripped(tmp_path: Path) -> None:
    """A *_PASSWORD_FILE (a Kubernetes secret mount) supplies the password."""
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    s = load_settings(environ={"FLEET_BRIDGE_MQTT_PASSWORD_FILE": str(secret)})
    assert s.mqtt_password() == "from-file"
    with pytest.raises(ConfigError, match="FLEET_BRIDGE_MQTT_PASSWORD_FILE"):
        load_settings(environ={"FLEET_BRIDGE_MQTT_PASSWORD_FILE": str(secret), "FLEET_BRIDGE_MQTT_PASSWORD": "x"})


def test_bad_value_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI turns a configuration error into exit code 2 and one readable line."""
    monkeypatch.setenv("FLEET_BRIDGE_BATCH_MAX_DELAY_MS", "-5")
    assert main(["check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "FLEET_BRIDGE_BATCH_MAX_DELAY_MS" in err
    assert "Traceback" not in err


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after validation."""
    s = Settings()
    with pytest.raises(AttributeError):
        s.db = s.db  # type: ignore[misc]
