"""Every Python block of README.md and docs/*.md runs alone (a fresh interpreter, in an empty
directory, as a reader pasting it into a file would run it) and its asserts hold; every relative
link of those pages points at a file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (page, i, block)
    for page in PAGES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL))
]


def test_the_pages_hold_code_and_the_readme_stays_short():
    assert {page.name for page, _, _ in BLOCKS} >= {"README.md", "decoding.md", "algorithms.md"}
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize(
    ("page", "block"),
    [(page, block) for page, _, block in BLOCKS],
    ids=[f"{page.name}:{i}" for page, i, _ in BLOCKS],
)
def test_block_runs_alone(page, block, tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"{page.name}:\n{block}\n{run.stderr[-3000:]}"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name}: {target}"
