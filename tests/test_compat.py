"""The transformers range: declared where pip reads it, and checked where a user runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from energyprune import compat

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_declares_the_tested_range():
    hf = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["hf"]
    assert compat.TRANSFORMERS_REQUIREMENT in hf
    low, high = compat.TRANSFORMERS_TESTED
    upper = re.search(r"<(\d+)\.(\d+)", compat.TRANSFORMERS_REQUIREMENT)
    assert upper is not None
    # The upper bound is the next minor release after the newest tested one.
    assert (int(upper.group(1)), int(upper.group(2))) == (compat.version_tuple(high)[0],
                                                          compat.version_tuple(high)[1] + 1)
    assert f">={low}" in compat.TRANSFORMERS_REQUIREMENT


def test_installed_transformers_is_within_the_tested_range():
    """Fails, naming the version, when this environment has a transformers release the suite was
    not run on before: run the suite on it, then move TRANSFORMERS_TESTED and pyproject.toml."""
    transformers = pytest.importorskip("transformers")
    problem = compat.transformers_outside_tested_range(transformers.__version__)
    assert problem is None, problem


@pytest.mark.parametrize("version, outside", [("4.57.6", False), ("5.25.0", False), ("5.25.3", False),
                                              ("5.26.0", True), ("6.0.0.dev0", True), ("4.56.2", True)])
def test_range_check(version, outside):
    problem = compat.transformers_outside_tested_range(version)
    assert (problem is not None) == outside
    if outside:
        assert version in problem


def test_the_package_and_pyproject_agree_on_the_version():
    from energyprune import __version__

    assert tomllib.loads(PYPROJECT.read_text())["project"]["version"] == __version__
