"""The version has one source, pyproject.toml: the package, both commands and the
installed distribution all report it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata

import pytest

import bridge
from tests.support.services import ROOT

pytestmark = pytest.mark.unit

PYPROJECT_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_package_version_is_the_installed_distributions_from_pyproject() -> None:
    """bridge.__version__ comes from the installed metadata, which pyproject.toml wrote."""
    assert bridge.__version__ == metadata.version("fleet-telemetry-bridge") == PYPROJECT_VERSION


@pytest.mark.parametrize("module", ["bridge", "loadgen"])
def test_each_command_prints_that_version(module: str) -> None:
    """`fleet-bridge --version` and `fleet-loadgen --version` print it and exit 0."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"fleet-{module}", PYPROJECT_VERSION]


def test_pyproject_names_its_urls_and_a_build_backend_that_reads_its_license() -> None:
    """project.urls names the repository, its issues and changelog; the license is
    an SPDX expression (PEP 639), which setuptools reads from version 77 on, so the
    build backend asks for at least that."""
    requirements = pytest.importorskip("packaging.requirements")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {"Source", "Issues", "Changelog", "Documentation"} <= set(pyproject["project"]["urls"])
    assert isinstance(pyproject["project"]["license"], str)
    (setuptools,) = [requirements.Requirement(r) for r in pyproject["build-system"]["requires"]]
    assert setuptools.name == "setuptools"
    assert "76.99" not in setuptools.specifier
    assert "77.0" in setuptools.specifier
