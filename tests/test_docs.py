"""The documentation stays true to the code: every setting is in the README's
table and in the example file, the example file loads to the defaults, what the
docs call optional is optional, and the deploy files agree with the docs."""

from __future__ import annotations

import dataclasses
import re
import tomllib

import pytest

from bridge.config import SECTIONS, Settings, env_name, load_settings
from tests.support.services import ROOT

pytestmark = pytest.mark.unit

EXAMPLE = ROOT / "config" / "fleet-bridge.toml"


def all_settings() -> list[tuple[str, str]]:
    return [(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def test_readme_configuration_table_names_every_setting() -> None:
    """Each FLEET_BRIDGE_* variable appears in the README's configuration table."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [env_name(s, k) for s, k in all_settings() if f"`{env_name(s, k)}`" not in table]
    assert not missing


def test_example_config_loads_to_the_defaults() -> None:
    """config/fleet-bridge.toml lists every key with its default value."""
    text = EXAMPLE.read_text()
    for section, key in all_settings():
        assert re.search(rf"^#?\s*{key}\s*=", text, re.MULTILINE), f"{section}.{key} missing from the example"
    assert load_settings(str(EXAMPLE), environ={}) == Settings()


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def test_what_the_docs_call_optional_is_not_a_dependency() -> None:
    """A package the README or docs/ call optional ("optional", "only where wanted")
    is in no way installed with the bridge: none is a runtime dependency (uvloop is
    one, and was called optional)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {requirement_name(r) for r in project["dependencies"]}
    extras = {requirement_name(r) for name, reqs in project["optional-dependencies"].items() if name != "dev"
              for r in reqs}  # fmt: skip
    texts = [(ROOT / "README.md").read_text(), *(p.read_text() for p in (ROOT / "docs").glob("*.md"))]
    named = set()
    for sentence in (s for text in texts for s in re.split(r"(?<=[.:;])\s", " ".join(text.split()))):
        if "optional" in sentence or "only where wanted" in sentence:
            named |= {word.lower() for word in re.findall(r"`([\w.-]+)`", sentence)} & (required | extras)
    assert named
    assert named <= extras, named & required


def test_the_broker_config_and_the_sizing_table_agree_on_memory_per_queued_reading() -> None:
    """mosquitto.conf's sizing note states the broker memory per queued reading that
    docs/operations.md's sizing table gives (measured there)."""
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    sizing = (ROOT / "docs" / "operations.md").read_text()
    in_conf = re.search(r"about (\d+) bytes per queued reading", conf)
    in_docs = re.search(r"≈ (\d+) B per queued reading", sizing)
    assert in_conf is not None
    assert in_docs is not None
    assert in_conf[1] == in_docs[1]


def test_broker_configs_name_only_files_that_exist() -> None:
    """Every file or directory a comment of deploy/mosquitto/*.conf points at (a
    relative name ending in .conf, .example or /) is in the repository."""
    mosquitto = ROOT / "deploy" / "mosquitto"
    for conf in mosquitto.glob("*.conf"):
        comments = "\n".join(line for line in conf.read_text().splitlines() if line.lstrip().startswith("#"))
        for name in re.findall(r"(?<![\w/.$-])([\w.-]+(?:/[\w.-]+)*(?:\.conf|\.example|/))(?![\w/])", comments):
            assert (mosquitto / name).exists() or (ROOT / name).exists(), f"{conf.name} names {name}: not found"
