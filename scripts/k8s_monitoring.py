"""Write the Kubernetes copies of the monitoring files, so that there is one source each:

- deploy/k8s/prometheusrule.yaml: a PrometheusRule (Prometheus Operator) holding the
  groups of deploy/prometheus/alerts.yml;
- deploy/k8s/dashboard-configmap.yaml: a ConfigMap holding the Grafana dashboard,
  labelled for Grafana's dashboard sidecar.

Run after changing either source: ``python scripts/k8s_monitoring.py``. With
``--check`` it writes nothing and exits 1 if a copy is out of date (the tests run it).
The rules are copied as text, comments included, so the copy reads like the source.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "fleet-bridge.json"
RULE_OUT = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"
DASHBOARD_OUT = ROOT / "deploy" / "k8s" / "dashboard-configmap.yaml"

LABELS = """\
  labels:
    app.kubernetes.io/name: fleet-bridge
    app.kubernetes.io/component: monitoring
"""


def indented(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line if line.strip() else line for line in text.splitlines(keepends=True))


def prometheus_rule(alerts: str) -> str:
    """The PrometheusRule: alerts.yml from its ``groups:`` line on, under ``spec``."""
    groups = alerts[alerts.index("\ngroups:") + 1 :]
    return (
        "# Generated from deploy/prometheus/alerts.yml by scripts/k8s_monitoring.py: edit that file.\n"
        "# The bridge's alert rules for the Prometheus Operator (needs its CRDs). If your\n"
        "# Prometheus selects rules by label (e.g. release: prometheus), add it in an overlay.\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: fleet-bridge\n"
        f"{LABELS}"
        "spec:\n"
        f"{indented(groups, 2)}"
    )


def dashboard_config_map(dashboard: str) -> str:
    """The ConfigMap: the dashboard's JSON as one key, for Grafana's sidecar."""
    return (
        "# Generated from deploy/grafana/dashboards/fleet-bridge.json by scripts/k8s_monitoring.py: edit that file.\n"
        "# The Grafana dashboard. Grafana's dashboard sidecar (as in the kube-prometheus-stack\n"
        "# chart) loads every ConfigMap labelled grafana_dashboard.\n"
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: fleet-bridge-dashboard\n"
        f"{LABELS}"
        '    grafana_dashboard: "1"\n'
        "data:\n"
        "  fleet-bridge.json: |\n"
        f"{indented(dashboard, 4)}"
    )


def outputs() -> dict[Path, str]:
    return {
        RULE_OUT: prometheus_rule(ALERTS.read_text(encoding="utf-8")),
        DASHBOARD_OUT: dashboard_config_map(DASHBOARD.read_text(encoding="utf-8")),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a copy is out of date; write nothing")
    args = parser.parse_args(argv)
    stale = [path for path, text in outputs().items() if not path.is_file() or path.read_text("utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python scripts/k8s_monitoring.py", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs()[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
