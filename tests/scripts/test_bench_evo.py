"""scripts/bench_evo.py's smoke run (--quick): vortex and futurefill on the same tiny Evo 2
weights give the same greedy tokens, and every part writes its table (the timings themselves are
the benchmark's, not a test's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import vortex_reference as vr

pytestmark = pytest.mark.skipif(not vr.vortex_available(), reason="vortex (vtx) not installed")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_evo.py"


def test_the_quick_run_checks_tokens_and_writes_every_table(tmp_path):
    parts = "small,ragged,modal-vs-continuous"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--parts", parts, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    tables = {name: (tmp_path / f"{name}.md").read_text() for name in parts.split(",")}
    assert "equal vortex's cached tokens" in tables["small"]
    assert "equal vortex's cached tokens" in tables["ragged"]
    assert not any("TOKENS DIFFER" in text for text in tables.values())
    assert (tmp_path / "bench_evo.json").is_file() and (tmp_path / "summary.md").is_file()
