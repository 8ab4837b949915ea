"""deploy/compose.yaml without Docker: the files it mounts exist, Prometheus scrapes
the bridge it runs, one-shots run in order, each program gets its least-privilege
role, and the mapping it imports is the load generator's."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from loadgen.cli import write_mapping
from tests.support.services import ROOT

pytestmark = pytest.mark.unit

DEPLOY = ROOT / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return document


def test_every_mounted_file_is_in_the_repository(compose: dict[str, Any]) -> None:
    """Bind mounts name files and directories of deploy/ that exist."""
    mounts = [v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", []) if v.startswith(".")]
    assert "./prometheus/alerts.yml" in mounts
    assert "./grafana/dashboards" in mounts
    missing = [m for m in mounts if not (DEPLOY / m).exists()]
    assert not missing


def test_prometheus_scrapes_the_bridge_service(compose: dict[str, Any]) -> None:
    """The scrape target of deploy/prometheus/prometheus.yml is the bridge service's metrics port."""
    yaml = pytest.importorskip("yaml")
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    host, port = scrape["static_configs"][0]["targets"][0].split(":")
    bridge = compose["services"][host]
    assert bridge["command"] == ["run"]
    assert any(p.endswith(f":{port}:{port}") for p in bridge["ports"])


def test_one_shots_run_in_order_before_the_bridge(compose: dict[str, Any]) -> None:
    """Roles, then the migration, then the grants on the migrated tables, then the
    mapping and the bridge; each step only after the previous one succeeded."""
    services = compose["services"]

    def after(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert after("roles") == {"postgres": "service_healthy"}
    assert after("migrate") == {"roles": "service_completed_successfully"}
    assert after("grants") == {"migrate": "service_completed_successfully"}
    assert after("mapping") == {"grants": "service_completed_successfully"}
    assert after("fleet-bridge")["grants"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["migrate"]


def test_each_program_connects_with_its_role_of_roles_sql(compose: dict[str, Any]) -> None:
    """Migrations and the mapping as the schema owner, the daemon as the ingest role,
    Grafana as the report role (the defaults of deploy/postgres/roles.sql)."""
    services = compose["services"]

    def user(name: str) -> str:
        dsn: str = services[name]["environment"]["FLEET_BRIDGE_DB_DSN"]
        return dsn.split("//")[1].split("@")[0]

    assert (user("migrate"), user("mapping"), user("fleet-bridge")) == ("fleet_owner", "fleet_owner", "fleet_ingest")
    assert services["grafana"]["environment"]["FLEET_GRAFANA_DB_USER"] == "fleet_report"
    roles_sql = (DEPLOY / "postgres" / "roles.sql").read_text()
    assert all(f"\\set {r} fleet_{r}" in roles_sql for r in ("owner", "ingest", "report"))


def test_the_imported_mapping_is_the_load_generators(compose: dict[str, Any], tmp_path: Path) -> None:
    """The mapping service's shell script writes the same CSV as fleet-loadgen."""
    script = compose["services"]["mapping"]["command"][0].replace("$$", "$")
    generate, _, importer = script.partition(" && ")
    assert importer == "exec fleet-bridge mapping import /tmp/mapping.csv"
    made = tmp_path / "compose.csv"
    subprocess.run(["/bin/sh", "-c", generate.replace("/tmp/mapping.csv", str(made))], check=True)
    write_mapping(tmp_path / "loadgen.csv", 10_000)
    assert made.read_text() == (tmp_path / "loadgen.csv").read_text()
