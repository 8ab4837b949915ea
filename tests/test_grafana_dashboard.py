"""The shipped Grafana dashboard: valid JSON whose PromQL reads only exported series
and covers every contract metric, and whose efficiency panels read the roll-up and
show what the report shows."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from bridge.analytics.report import hourly_summary
from bridge.analytics.rollup import rollup_lock, run_pass
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


def panel_sql(title: str) -> str:
    (panel,) = [p for p in dashboard()["panels"] if p["title"] == title]
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


@pytest.mark.unit
def test_no_panel_reads_the_readings() -> None:
    """The PostgreSQL panels read the roll-up only: refreshing the dashboard never runs
    the nearest-reading pairing over history (CONTRACT: the dashboard costs the
    database next to nothing)."""
    sqls = [t["rawSql"] for t in targets(dashboard(), POSTGRES_TYPE)]
    assert sqls
    for sql in sqls:
        assert "efficiency_" in sql
        assert "_telemetry_history" not in sql


@pytest.mark.integration
async def test_efficiency_panels_show_what_the_report_shows(db: asyncpg.Connection, schema: str) -> None:
    """After a roll-up pass, the efficiency panel gives per hour the summary's
    efficiency and unmatched share (hours in the range only), and the least-efficient
    panel ranks vehicles by their DC / AC over the range, lowest first."""
    h1 = datetime(2026, 11, 27, 1, tzinfo=UTC)
    for table in HISTORY_TABLES:
        await ensure_partitions(db, schema, table, [h1.date()])
    await db.executemany(
        f'INSERT INTO "{schema}".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ($1, $2)',
        [("EV-1", "MTR-1"), ("EV-2", "MTR-2")],
    )
    readings = [  # (hour offset, minute, vehicle dc, meter ac; None: no meter reading)
        (0, 10, "1", 0.9, 1.0), (0, 20, "2", 0.7, 1.0), (0, 30, "2", 0.5, None),
        (1, 10, "1", 0.8, 1.0), (3, 10, "1", 5.0, 5.0),  # 04:00 is outside the range
    ]  # fmt: skip
    for hours, minute, n, dc, ac in readings:
        at = h1 + timedelta(hours=hours, minutes=minute)
        await db.execute(
            f'INSERT INTO "{schema}".vehicle_telemetry_history (vehicle_id, recorded_at, received_at, kwh_delivered_dc)'
            " VALUES ($1, $2, $2, $3)",
            f"EV-{n}", at, dc,
        )  # fmt: skip
        if ac is not None:
            await db.execute(
                f'INSERT INTO "{schema}".meter_telemetry_history (meter_id, recorded_at, received_at, kwh_consumed_ac)'
                " VALUES ($1, $2, $2, $3)",
                f"MTR-{n}", at + timedelta(seconds=2), ac,
            )  # fmt: skip
    async with rollup_lock(db, schema, wait=None):
        await run_pass(
            [db], schema, now=h1 + timedelta(days=1), settle=timedelta(0), keep_from=h1 - timedelta(days=1),
            requested=(h1, h1 + timedelta(hours=4)),
        )  # fmt: skip
    start, end = h1 + timedelta(minutes=30), h1 + timedelta(hours=3)  # the panel shows the hour of `start` too

    rows = await db.fetch(grafana_sql(panel_sql("Charging efficiency by hour"), schema, start, end))
    summary = await hourly_summary(db, schema, h1, h1 + timedelta(hours=3))
    assert [(r["time"], r["efficiency"], r["unmatched share"]) for r in rows] == [
        (s.hour, s.efficiency, s.unmatched / (s.matched + s.unmatched)) for s in reversed(summary)
    ]
    assert [s.hour for s in summary] == [h1 + timedelta(hours=1), h1]

    worst = await db.fetch(grafana_sql(panel_sql("Least efficient vehicles"), schema, start, end))
    assert [(r["vehicle"], r["efficiency"], r["matched readings"], r["unmatched readings"]) for r in worst] == [
        ("EV-2", 0.7, 1, 1),
        ("EV-1", pytest.approx((0.9 + 0.8) / 2.0), 2, 0),
    ]
