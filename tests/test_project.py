"""The project's own files: packaging metadata without deprecated forms, and no reference a
reader of the repository cannot follow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_license_is_an_spdx_expression():
    """A ``{ text = ... }`` table makes setuptools print a deprecation warning at every install."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"


def test_no_reference_points_outside_the_repository():
    """The project's derivations live in it (docs/, docstrings), not in files beside it."""
    outside = re.compile(
        r"FUTUREFILL\.md|MODELS\.md|SERVING\.md|STYLE\.md|shared/reference|\bissue \d+"
    )
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    for folder in ("src", "tests", "scripts"):
        files += [p for p in (ROOT / folder).rglob("*.py") if p.name != "test_project.py"]
    found = [f"{p.relative_to(ROOT)}" for p in files if outside.search(p.read_text())]
    assert found == []
