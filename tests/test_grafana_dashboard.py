"""The shipped Grafana dashboard: valid JSON whose PromQL reads only exported series
and covers every contract metric, and whose efficiency SQL pairs readings like the
report does."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from bridge.metrics import Metrics
from bridge.schema.partitions import ensure_partitions
from bridge.streams import HISTORY_TABLES
from tests.support.promql import exported_series, metric_names
from tests.support.services import ROOT

pytestmark = pytest.mark.clock

GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "fleet-bridge.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "fleet-bridge.yml"
POSTGRES_TYPE = "grafana-postgresql-datasource"


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def targets(doc: dict[str, Any], datasource_type: str) -> list[dict[str, Any]]:
    return [t for p in doc["panels"] for t in p.get("targets", []) if p["datasource"]["type"] == datasource_type]


def efficiency_sql() -> str:
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == "Charging efficiency by hour"]
    assert panel["datasource"]["type"] == POSTGRES_TYPE
    (target,) = panel["targets"]
    sql: str = target["rawSql"]
    return sql


@pytest.mark.unit
def test_dashboard_is_well_formed() -> None:
    """Unique panel ids, a grid position for each, and data sources chosen through
    the dashboard's own data-source variables (so import and provisioning both work)."""
    doc = dashboard()
    assert doc["uid"] == "fleet-bridge"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["prometheus"]["type"] == variables["postgres"]["type"] == "datasource"
    for panel in doc["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] in ("${prometheus}", "${postgres}"), panel["title"]


@pytest.mark.unit
def test_every_promql_expression_reads_only_exported_series() -> None:
    """Each PromQL target names at least one metric, and only metrics bridge.metrics exports."""
    known = exported_series()
    exprs = [t["expr"] for t in targets(dashboard(), "prometheus")]
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= known, f"unknown series {sorted(names - known)} in {expr}"


@pytest.mark.unit
def test_every_contract_metric_is_on_the_dashboard() -> None:
    """Every metric family of the registry (docs/contract.md section 8) appears in some panel."""
    used = set().union(*(metric_names(t["expr"]) for t in targets(dashboard(), "prometheus")))
    for family in Metrics().registry.collect():
        assert any(name.startswith(family.name) for name in used), f"{family.name} is on no panel"


@pytest.mark.unit
def test_provisioned_datasources_have_the_dashboards_types() -> None:
    """The provisioning file defines a data source of each type the dashboard asks for."""
    provisioned = set(re.findall(r"^\s+type: (\S+)", DATASOURCES.read_text(), re.MULTILINE))
    wanted = {v["query"] for v in dashboard()["templating"]["list"] if v["type"] == "datasource"}
    assert wanted == {"prometheus", POSTGRES_TYPE}
    assert wanted <= provisioned


def grafana_sql(sql: str, schema: str, start: datetime, end: datetime) -> str:
    """The panel's SQL as Grafana sends it: macros and variables expanded."""
    for macro, value in (("$__timeFrom()", start), ("$__timeTo()", end)):
        sql = sql.replace(macro, f"'{value:%Y-%m-%dT%H:%M:%SZ}'")
    return sql.replace("${schema}", f'"{schema}"')


@pytest.mark.integration
async def test_efficiency_panel_pairs_each_vehicle_reading_with_the_nearest_meter_reading(
    db: asyncpg.Connection, schema: str
) -> None:
    """Per UTC hour of [from, to): each vehicle reading of a mapped vehicle pairs with its
    own meter's nearest reading within ±5 s inclusive (tie: the earlier one); one with
    none is unmatched and counts in neither sum; unmapped vehicles are left out."""
    h1 = datetime(2026, 11, 27, 1, tzinfo=UTC)
    for table in HISTORY_TABLES:
        await ensure_partitions(db, schema, table, [h1.date()])
    h2, h3 = h1 + timedelta(hours=1), h1 + timedelta(hours=2)

    def at(hour: datetime, minute: int, second: int = 0) -> datetime:
        return hour + timedelta(minutes=minute, seconds=second)

    vehicles = [
        ("EV-1", at(h1, 10), 0.9),  # meters at -3 s and +2 s: the +2 s one (1.0)
        ("EV-1", at(h1, 20), 0.45),  # meters at -2 s and +2 s: a tie, the earlier (0.5)
        ("EV-2", at(h1, 30), 0.7),  # its meter only at +6 s: unmatched
        ("EV-2", at(h1, 40), 0.8),  # its meter at +5 s (1.0); MTR-1 at 0 s is not its meter
        ("EV-3", at(h1, 50), 0.6),  # no mapping: not in the panel
        ("EV-1", at(h2, 0), 0.9),
        ("EV-1", h3, 5.0),  # outside [from, to)
    ]
    meters = [
        ("MTR-1", at(h1, 9, 57), 5.0),
        ("MTR-1", at(h1, 10, 2), 1.0),
        ("MTR-1", at(h1, 19, 58), 0.5),
        ("MTR-1", at(h1, 20, 2), 9.0),
        ("MTR-2", at(h1, 30, 6), 3.0),
        ("MTR-2", at(h1, 40, 5), 1.0),
        ("MTR-1", at(h1, 40), 100.0),
        ("MTR-3", at(h1, 50), 1.0),
        ("MTR-1", at(h2, 0, 1), 1.0),
        ("MTR-1", h3, 5.0),
    ]
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)',
        [("EV-1", "MTR-1"), ("EV-2", "MTR-2")],
    )
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_telemetry_history (vehicle_id, recorded_at, received_at, kwh_delivered_dc)'
        " VALUES ($1, $2, $2, $3)",
        vehicles,
    )
    await db.executemany(
        f'INSERT INTO "{schema}".meter_telemetry_history (meter_id, recorded_at, received_at, kwh_consumed_ac)'
        " VALUES ($1, $2, $2, $3)",
        meters,
    )

    rows = await db.fetch(grafana_sql(efficiency_sql(), schema, h1, h3))

    assert [(r["time"], round(r["efficiency"], 9), r["unmatched readings"]) for r in rows] == [
        (h1, round((0.9 + 0.45 + 0.8) / (1.0 + 0.5 + 1.0), 9), 1),
        (h2, 0.9, 0),
    ]
