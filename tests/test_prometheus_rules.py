"""The shipped Prometheus files: valid for promtool, every alert unit-tested both
firing and quiet, annotated for the on-call, and reading only real series."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest

from tests.support.promql import PROMETHEUS_SERIES, exported_series, metric_names
from tests.support.services import ROOT

pytestmark = pytest.mark.unit

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool not found: install the Debian package 'prometheus' to run this check")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


def alert_blocks() -> dict[str, str]:
    """Each alerting rule's YAML text, by alert name."""
    blocks = re.split(r"^\s*- alert: ", RULES.read_text(), flags=re.MULTILINE)[1:]
    return {block.split(maxsplit=1)[0]: block for block in blocks}


def rule_expression(block: str) -> str:
    """The ``expr`` of one rule block, single-line or a ``|`` block."""
    match = re.search(r"^\s+expr: (?:\|\n(?P<body>(?:\s{10,}.*\n)+)|(?P<line>.*))", block, re.MULTILINE)
    assert match is not None, block
    return match["body"] or match["line"]


@pytest.mark.parametrize(
    "args",
    [("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"), ("test", "rules", "alerts_test.yml")],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_the_shipped_files(args: tuple[str, ...]) -> None:
    """promtool validates the scrape config and the rules, and the rule unit tests pass."""
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_summary_a_description_a_runbook_url_and_a_severity() -> None:
    """Each alert tells the on-call what is wrong (summary), what to look at first
    (description) and where its runbook is: runbook_url, the alert's section of
    docs/observability.md in the project's repository (pyproject's Source URL)."""
    source = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Source"]
    sections = re.findall(r"^### (\w+)$", (ROOT / "docs" / "observability.md").read_text(), re.MULTILINE)
    blocks = alert_blocks()
    assert len(blocks) >= 8
    for name, block in blocks.items():
        for key in ("summary", "description", "severity"):
            assert re.search(rf"^\s+{key}: \S", block, re.MULTILINE), f"{name} has no {key}"
        assert re.search(r"^\s+runbook:", block, re.MULTILINE) is None, f"{name}: runbook_url is the convention"
        url = re.search(r'^\s+runbook_url: "(\S+)"$', block, re.MULTILINE)
        assert url is not None, f"{name} has no runbook_url"
        assert url[1] == f"{source}/blob/main/docs/observability.md#{name.lower()}"
        assert name in sections, f"{name} has no section in docs/observability.md"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    """alerts_test.yml has, for every alert, a case where it fires and one where it does not."""
    tests = RULE_TESTS.read_text()
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels:", tests))
    quiet = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts: \[\]", tests))
    names = set(alert_blocks())
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_alert_expressions_read_only_exported_series() -> None:
    """Every metric an alert reads exists in bridge.metrics (or is Prometheus's own ``up``)."""
    known = exported_series() | PROMETHEUS_SERIES
    for name, block in alert_blocks().items():
        names = metric_names(rule_expression(block))
        assert names, f"{name}: no metric found in its expression"
        assert names <= known, f"{name} reads unknown series {sorted(names - known)}"
