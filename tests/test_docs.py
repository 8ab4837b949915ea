"""The documentation stays true to the code: every setting is in the README's
table and in the example file, and the example file loads to the defaults."""

from __future__ import annotations

import dataclasses
import re

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
