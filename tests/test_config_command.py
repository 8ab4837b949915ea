"""`fleet-bridge config`: every effective setting with the place that set it, and
secrets shown only as set or unset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.commands.cli import main
from bridge.config import setting_keys

pytestmark = pytest.mark.unit

# Unique strings that must appear nowhere in the output.
MARKERS = ("Mk7dsnSecret", "Mk7dbSecret", "Mk7mqttSecret")


def run_config(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], environ: dict[str, str]
) -> str:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 0
    return capsys.readouterr().out


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.toml"
    dsn = f"postgresql://ingest:{MARKERS[0]}@db.example:5432/fleet"
    path.write_text(f'[db]\ndsn = "{dsn}"\nschema = "site_a"\n[batch]\nmax_rows = 500\nmax_delay_ms = 50\n')
    return path


def test_each_setting_shows_its_value_and_where_it_came_from(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One row per setting of every section; file, variable, flag and default are
    told apart and the file, variable or flag is named."""
    out = run_config(
        ["--config", str(config_file), "config", "--format", "json", "--set", "batch.max_delay_ms=20"],
        monkeypatch, capsys, {"FLEET_BRIDGE_BATCH_MAX_ROWS": "800", "FLEET_BRIDGE_MQTT_HOST": "broker.example"},
    )  # fmt: skip
    doc = orjson.loads(out)
    rows: dict[str, dict[str, Any]] = {row["setting"]: row for row in doc["settings"]}
    assert doc["config_file"] == str(config_file)
    assert list(rows) == setting_keys()
    picked = {key: (rows[key]["value"], rows[key]["source"], rows[key]["from"]) for key in
              ("db.schema", "batch.max_rows", "mqtt.host", "batch.max_delay_ms", "mqtt.port")}  # fmt: skip
    assert picked == {
        "db.schema": ("site_a", "file", str(config_file)),
        "batch.max_rows": (800, "variable", "FLEET_BRIDGE_BATCH_MAX_ROWS"),
        "mqtt.host": ("broker.example", "variable", "FLEET_BRIDGE_MQTT_HOST"),
        "batch.max_delay_ms": (20, "flag", "--set batch.max_delay_ms"),
        "mqtt.port": (1883, "default", None),
    }
    assert rows["batch.max_rows"]["variable"] == "FLEET_BRIDGE_BATCH_MAX_ROWS"


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_secrets_show_as_set_or_unset_and_nowhere_else(
    fmt: str, config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With marker passwords in the DSN (from the file), in FLEET_BRIDGE_DB_PASSWORD
    and in a FLEET_BRIDGE_MQTT_PASSWORD_FILE, no marker is in the output; the
    passwords read set, the unset ones unset, the DSN keeps its host."""
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text(MARKERS[2] + "\n")
    environ = {"FLEET_BRIDGE_DB_PASSWORD": MARKERS[1], "FLEET_BRIDGE_MQTT_PASSWORD_FILE": str(secret_file)}
    out = run_config(["--config", str(config_file), "config", "--format", fmt], monkeypatch, capsys, environ)
    err = capsys.readouterr().err
    for marker in MARKERS:
        assert marker not in out + err
    assert "db.example:5432/fleet" in out
    if fmt == "json":
        values = {row["setting"]: row["value"] for row in orjson.loads(out)["settings"]}
        assert (values["db.password"], values["mqtt.password"]) == ("set", "unset")
        assert values["mqtt.password_file"] == str(secret_file)
    else:
        lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
        assert lines["db.password"] == ["set", "variable", "FLEET_BRIDGE_DB_PASSWORD"]
        assert lines["mqtt.password"] == ["unset", "default"]
        assert lines["batch.max_rows"] == ["500", "file", str(config_file)]


def test_a_bad_value_is_a_configuration_error_naming_its_place(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config` validates like every command: exit 2, one line naming the key and the file."""
    config_file.write_text("[batch]\nmax_rows = 0\n")
    assert main(["--config", str(config_file), "config"]) == 2
    assert f"batch.max_rows in {config_file}" in capsys.readouterr().err
