"""The deployment files, checked with each ecosystem's own tools (hadolint,
systemd-analyze, kubernetes-validate, mosquitto) and against each other and the
settings: what the tools cannot know, e.g. that the probes hit the metrics port."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge.config import SECTIONS, MetricsSettings, Settings, env_name
from tests.support import systemd_unit
from tests.support.services import ROOT, MosquittoProcess

DRAIN_TIMEOUT_S = Settings().mqtt.drain_timeout_s

DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "fleet-bridge.json"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "fleet-bridge.env.example"
# Core Kubernetes kinds only: kubernetes-validate has no schema for the Prometheus
# Operator's CRDs (nor a way to be given one), so it only warns about them.
# test_servicemonitor_* and test_prometheusrule_* check those instead.
CRD_FILES = {"servicemonitor.yaml", "prometheusrule.yaml"}
SETTING_NAMES = {env_name(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
METRICS_PORT = MetricsSettings().port


def tool(name: str) -> str:
    """A command from the virtualenv (pip-installed tools) or PATH, or a skip."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]', or the Debian package)")
    return found


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


# --- Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(word.upper(), rest.strip()) for word, _, rest in (line.partition(" ") for line in lines)]


@pytest.mark.unit
def test_dockerfile_passes_hadolint() -> None:
    """hadolint reports nothing, not even style or info findings."""
    result = run(tool("hadolint"), str(DOCKERFILE))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.unit
def test_dockerfile_runs_fleet_bridge_as_non_root_with_health_check_on_metrics_port() -> None:
    """Two stages; the runtime stage runs as a non-root numeric user, exec-form
    ENTRYPOINT fleet-bridge with CMD run, a HEALTHCHECK, and EXPOSEs the metrics port."""
    instructions = dockerfile_instructions()
    stages = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    assert len(stages) >= 2
    runtime = dict(instructions[stages[-1] :])
    user = runtime["USER"].split(":")[0]
    assert user.isdigit()
    assert int(user) != 0
    assert runtime["ENTRYPOINT"] == '["fleet-bridge"]'
    assert runtime["CMD"] == '["run"]'
    assert "/healthz" in runtime["HEALTHCHECK"] or "fleet-bridge check" in runtime["HEALTHCHECK"]
    assert runtime["EXPOSE"] == str(METRICS_PORT)
    assert runtime["COPY"].startswith("--from=builder")


@pytest.mark.unit
def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    """.dockerignore excludes everything by default and re-includes exactly the
    sources of the Dockerfile's COPY instructions."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied: set[str] = set()
    for word, args in dockerfile_instructions():
        if word == "COPY" and not args.startswith("--from"):
            copied.update(s.rstrip("/") for s in args.split()[:-1])
    assert copied == included


@pytest.mark.unit
def test_requirements_lock_pins_every_runtime_dependency_within_pyproject_ranges() -> None:
    """requirements.lock pins (==) exactly the runtime dependencies of the project,
    transitively, and every pin satisfies the range pyproject.toml declares."""
    requirements = pytest.importorskip("packaging.requirements")
    utils = pytest.importorskip("packaging.utils")
    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned with ==: {line}"
            lock[utils.canonicalize_name(name)] = version.strip()
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pending = [requirements.Requirement(r) for r in declared]
    for req in pending:
        assert lock.get(utils.canonicalize_name(req.name)) in req.specifier, f"{req} is not pinned inside its range"
    closure = set()
    while pending:
        req = pending.pop()
        name = utils.canonicalize_name(req.name)
        if name in closure or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        closure.add(name)
        pending += [requirements.Requirement(r) for r in metadata.requires(name) or []]
    assert set(lock) == closure


# --- systemd -------------------------------------------------------------------------


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's fleet-bridge, since
    systemd-analyze checks that the binary exists."""
    binary = tool("fleet-bridge")
    text = systemd_unit.UNIT_FILE.read_text()
    (exec_start,) = systemd_unit.values("ExecStart")
    unit = tmp_path / systemd_unit.UNIT_FILE.name
    unit.write_text(text.replace(f"ExecStart={exec_start}", f"ExecStart={binary} run"))
    return unit


@pytest.mark.unit
def test_systemd_unit_passes_systemd_analyze_verify(installed_unit: Path) -> None:
    """systemd-analyze verify accepts the unit and says nothing about it."""
    result = run(tool("systemd-analyze"), "verify", str(installed_unit))
    assert result.returncode == 0, result.stderr
    assert installed_unit.name not in result.stdout + result.stderr


@pytest.mark.unit
def test_systemd_unit_exposure_score_is_low(installed_unit: Path) -> None:
    """systemd-analyze security rates the unit's exposure at 1.5 or less (0 is fully
    locked down, 10 is unprotected); docs/operations.md states the score."""
    result = run(tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(installed_unit))
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline: {result.stderr.strip()[:200]}")
    assert float(match[1]) <= 1.5, result.stdout


@pytest.mark.unit
def test_systemd_unit_drains_on_sigterm_restarts_on_failure_and_is_hardened() -> None:
    """The directives the operations guide relies on are present with these values."""
    expected = {
        "Type": "exec",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "KillSignal": "SIGTERM",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    }
    found = {key: systemd_unit.values(key) for key in expected}
    assert found == {key: [value] for key, value in expected.items()}
    assert "@system-service" in systemd_unit.values("SystemCallFilter")
    assert systemd_unit.values("MemoryMax")
    # Room for the drain deadline, after which the bridge exits 0 by itself.
    assert DRAIN_TIMEOUT_S < systemd_unit.timeout_stop_s() <= DRAIN_TIMEOUT_S + 60
    assert systemd_unit.values("ExecStart")[0].endswith("fleet-bridge run")


@pytest.mark.unit
def test_systemd_credentials_feed_the_password_file_settings() -> None:
    """Each password reaches the daemon as a systemd credential whose name the
    matching *_PASSWORD_FILE setting points at."""
    credentials = {v.split(":", 1)[0] for v in systemd_unit.values("LoadCredential")}
    environment = dict(v.split("=", 1) for v in systemd_unit.values("Environment"))
    files = {k: v for k, v in environment.items() if k.endswith("_PASSWORD_FILE")}
    assert set(files) == {"FLEET_BRIDGE_MQTT_PASSWORD_FILE", "FLEET_BRIDGE_DB_PASSWORD_FILE"}
    assert {v.removeprefix("%d/") for v in files.values()} == credentials


@pytest.mark.unit
def test_deploy_files_name_only_settings_that_exist() -> None:
    """Every FLEET_BRIDGE_* name in the env example (commented ones included), the
    unit and the Kubernetes manifests is a real setting: a typo would be ignored
    silently at run time."""
    texts = [ENV_EXAMPLE.read_text(), systemd_unit.UNIT_FILE.read_text()]
    texts += [p.read_text() for p in sorted(K8S.glob("*.yaml"))]
    names = {name for text in texts for name in re.findall(r"\bFLEET_BRIDGE_[A-Z0-9_]+", text)}
    assert names
    assert names <= SETTING_NAMES, names - SETTING_NAMES


# --- Kubernetes ------------------------------------------------------------------------


def manifests() -> dict[str, list[dict[str, Any]]]:
    """Every Kubernetes object in deploy/k8s, by file name (not the kustomization)."""
    yaml = pytest.importorskip("yaml")
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def the(kind: str, name: str = "fleet-bridge") -> dict[str, Any]:
    (found,) = [
        doc for docs in manifests().values() for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    return found


def containers(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod_spec["containers"]}


@pytest.mark.unit
def test_manifests_pass_kubernetes_validate_strict() -> None:
    """kubernetes-validate --strict (unknown fields are errors) accepts every core
    manifest against the oldest and the newest Kubernetes version it knows. The
    ServiceMonitor CRD has no schema there; its warning is the only one allowed."""
    utils = pytest.importorskip("kubernetes_validate.utils")
    versions = sorted(utils.all_versions(), key=lambda v: tuple(int(n) for n in v.split(".")))
    files = [str(K8S / name) for name in manifests()]
    command = [tool("kubernetes-validate"), "--strict", "-k", versions[0], "-k", versions[-1], *files]
    result = run(*command)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [line for line in lines if line.startswith(("ERROR", "FATAL"))]
    assert {Path(line.split()[1]).name for line in lines if line.startswith("WARN")} == CRD_FILES
    passed = {Path(line.split()[1]).name for line in lines if line.startswith("INFO") and " passed " in line}
    assert passed == set(manifests()) - CRD_FILES


# The Prometheus Operator's duration format (its CRDs' pattern, simplified).
DURATION: dict[str, Any] = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
STRING_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}


def custom_resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The schema of a monitoring.coreos.com/v1 object of ``kind``: a name, labels,
    and ``spec``; anything else is rejected."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "labels": STRING_MAP},
            },
            "spec": {"type": "object", "additionalProperties": False, **spec},
        },
    }


# The fields deploy/k8s uses of the two CRDs, with the CRDs' types and patterns: a
# stated equivalent of validating against the CRDs' own schemas, which no offline
# package ships. The rules' contents are checked by promtool below, as the
# operator's admission webhook checks them.
SERVICE_MONITOR_SCHEMA = custom_resource(
    "ServiceMonitor",
    {
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"matchLabels": STRING_MAP},
            },
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["port"],
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                    },
                },
            },
        },
    },
)
PROMETHEUS_RULE_SCHEMA = custom_resource(
    "PrometheusRule",
    {
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["alert", "expr"],
                                "properties": {
                                    "alert": {"type": "string"},
                                    "expr": {"type": "string"},
                                    "for": DURATION,
                                    "labels": STRING_MAP,
                                    "annotations": STRING_MAP,
                                },
                            },
                        },
                    },
                },
            },
        },
    },
)


@pytest.mark.unit
def test_servicemonitor_is_well_formed_and_scrapes_the_bridge_metrics_port() -> None:
    """The ServiceMonitor matches the schema of the fields it uses, selects the
    Service, which selects the bridge pods, and scrapes /metrics on the named port
    that leads to the container's metrics port."""
    jsonschema = pytest.importorskip("jsonschema")
    monitor, service, bridge = the("ServiceMonitor"), the("Service"), the("StatefulSet")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    pod_labels = bridge["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    (container,) = containers(bridge["spec"]["template"]["spec"]).values()
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]] == METRICS_PORT


@pytest.mark.unit
def test_monitoring_manifests_are_up_to_date_copies_of_the_rules_and_the_dashboard() -> None:
    """The PrometheusRule holds exactly alerts.yml's groups and the dashboard ConfigMap
    exactly the dashboard's JSON, labelled for Grafana's sidecar; regenerating them
    would change nothing."""
    yaml = pytest.importorskip("yaml")
    result = run(sys.executable, str(ROOT / "scripts" / "k8s_monitoring.py"), "--check")
    assert result.returncode == 0, result.stderr
    assert the("PrometheusRule")["spec"] == yaml.safe_load(ALERTS.read_text())
    dashboard = the("ConfigMap", "fleet-bridge-dashboard")
    assert json.loads(dashboard["data"]["fleet-bridge.json"]) == json.loads(DASHBOARD.read_text())
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.unit
def test_prometheusrule_is_well_formed_and_promtool_accepts_its_rules(tmp_path: Path) -> None:
    """The PrometheusRule matches the schema of the CRD fields it uses, and its
    spec, as a rule file, passes promtool check rules."""
    jsonschema = pytest.importorskip("jsonschema")
    yaml = pytest.importorskip("yaml")
    rule = the("PrometheusRule")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    result = run(tool("promtool"), "check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.unit
def test_kustomization_lists_every_manifest_and_sets_the_image_they_use() -> None:
    """kubectl apply -k deploys every manifest of the folder, with one image for all."""
    yaml = pytest.importorskip("yaml")
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == set(manifests())
    images = {
        c["image"]
        for docs in manifests().values()
        for doc in docs
        if "template" in doc.get("spec", {})
        for c in doc["spec"]["template"]["spec"]["containers"]
    }
    assert images == {image["name"] for image in kustomization["images"]}


@pytest.mark.unit
def test_bridge_replicas_share_a_group_with_own_client_ids_probes_and_drain_time() -> None:
    """Three replicas in one shared-subscription group, each with its pod name as
    MQTT client id; liveness on /healthz and readiness on /readyz; resources set;
    more grace on termination than the drain is allowed (the unit's TimeoutStopSec);
    pods stopped one at a time."""
    config, bridge = the("ConfigMap")["data"], the("StatefulSet")
    assert bridge["spec"]["replicas"] == 3
    assert config["FLEET_BRIDGE_MQTT_SHARED_GROUP"]
    pod = bridge["spec"]["template"]["spec"]
    (container,) = containers(pod).values()
    env = {e["name"]: e for e in container["env"]}
    assert env["FLEET_BRIDGE_MQTT_CLIENT_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container["args"] == ["run"]
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes == {
        "livenessProbe": {"path": "/healthz", "port": "metrics"},
        "readinessProbe": {"path": "/readyz", "port": "metrics"},
    }
    assert int(config["FLEET_BRIDGE_METRICS_PORT"]) == METRICS_PORT
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    assert pod["terminationGracePeriodSeconds"] >= systemd_unit.timeout_stop_s() > DRAIN_TIMEOUT_S
    assert bridge["spec"]["podManagementPolicy"] == "OrderedReady"


@pytest.mark.unit
def test_every_pod_is_non_root_read_only_and_without_privileges() -> None:
    """The bridge and the migration Job run non-root, with a read-only root file
    system, no privilege escalation, no capabilities and the runtime's seccomp
    profile; the migration Job runs `migrate` with the bridge's image."""
    bridge, job = the("StatefulSet"), the("Job", "fleet-bridge-migrate")
    for workload in (bridge, job):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in containers(pod).values():
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
    (migrate,) = containers(job["spec"]["template"]["spec"]).values()
    (run_container,) = containers(bridge["spec"]["template"]["spec"]).values()
    assert migrate["args"] == ["migrate"]
    assert migrate["image"] == run_container["image"]


@pytest.mark.unit
def test_secrets_are_only_referenced_and_read_from_mounted_files() -> None:
    """No Secret object and no password in the manifests: the DSNs carry none, and
    each *_PASSWORD_FILE points into a mounted Secret volume."""
    assert "Secret" not in {doc["kind"] for docs in manifests().values() for doc in docs}
    config = the("ConfigMap")["data"]
    assert not [key for key in config if "PASSWORD" in key]
    for key in ("FLEET_BRIDGE_DB_DSN", "MIGRATE_DB_DSN"):
        assert urlsplit(config[key]).password is None
    for workload in (the("StatefulSet"), the("Job", "fleet-bridge-migrate")):
        pod = workload["spec"]["template"]["spec"]
        secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
        for container in containers(pod).values():
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            for env in container["env"]:
                assert "PASSWORD" not in env["name"] or env["name"].endswith("_PASSWORD_FILE")
                if env["name"].endswith("_PASSWORD_FILE"):
                    directory = str(Path(env["value"]).parent)
                    assert mounts.get(directory) in secret_volumes, env


# --- Mosquitto -------------------------------------------------------------------------


@pytest.mark.integration
def test_mosquitto_starts_with_the_shipped_config_and_round_trips_a_qos1_message(
    private_broker: MosquittoProcess,
) -> None:
    """mosquitto -c accepts deploy/mosquitto/mosquitto.conf (the test only moves the
    listener, the persistence directory and the log to private places) and carries
    a QoS 1 message to a persistent MQTT v5 session."""
    subscribed, received = threading.Event(), threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="deploy-check", protocol=paho.MQTTv5)
    client.on_subscribe = lambda *_: subscribed.set()

    def on_message(_client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        if message.payload == b"ok":
            received.set()

    client.on_message = on_message
    client.connect(private_broker.host, private_broker.port, clean_start=False)
    client.loop_start()
    try:
        client.subscribe("deploy-check/+", qos=1)
        assert subscribed.wait(30), "no SUBACK"
        client.publish("deploy-check/1", b"ok", qos=1).wait_for_publish(30)
        assert received.wait(30), "the message did not come back"
    finally:
        client.disconnect()
        client.loop_stop()
    log = private_broker.log.read_text()
    assert "Error" not in log, log
