"""scripts/serve_demo.py (the end of make demo): the server starts, serves four concurrent
openai-client requests, and stops on SIGTERM with exit status 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openai")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "serve_demo.py"


def test_the_demo_serves_concurrent_requests_and_stops_cleanly():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert sum(line.startswith("--- ") for line in lines) == 4
    assert "4 concurrent requests served" in run.stdout
    assert lines[-1] == "futurefill serve stopped (exit status 0)"
