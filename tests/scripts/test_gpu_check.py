"""scripts/gpu_check.py: its CPU dry run (the same code at tiny sizes), and its summary."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what runs without CUDA")
def test_dry_run_says_so_in_one_line_and_checks_its_parts(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--only", "sync", "layer"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "gpu-check: no CUDA device here: dry run of the check on the CPU at tiny sizes"
    )
    assert lines[-1] == f"gpu-check: ok; results in {tmp_path}"
    assert json.loads((tmp_path / "sync.json").read_text())["deamortized"].startswith("no host")
    rows = json.loads((tmp_path / "layer" / "layer.json").read_text())["rows"]
    assert {r["method"] for r in rows if r["status"] == "ok"} >= {"continuous", "deamortized"}
    assert "| continuous | 256 |" in (tmp_path / "summary.md").read_text()


def test_a_failing_part_fails_the_check(tmp_path, monkeypatch):
    check = load_script()
    result = check.run_part("broken", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path, 60)
    assert result["status"] == 3
    assert "| broken | 3 |" in check.summarize(tmp_path, [result])


def test_quartile_ratio_weights_chunks_by_their_overlap():
    check = load_script()
    row = {"L": 8, "chunks": [(0, 2, 1.0), (2, 4, 1.0), (4, 8, 3.0)]}
    assert check.quartile_ratio(row) == pytest.approx(3.0)
    row = {"L": 8, "chunks": [(0, 1, 2.0), (1, 2, 4.0), (2, 8, 3.0)]}
    assert check.quartile_ratio(row) == pytest.approx(1.0)


def test_cuda_cases_are_collected_everywhere():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--co",
            "-o",
            "addopts=--import-mode=importlib",
            "-m",
            "cuda",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "online" / "test_traced.py"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert "test_feedback_loop_through_traced_steps[cuda]" in result.stdout
