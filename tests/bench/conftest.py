"""Fixtures for the benchmark tests: run the CLI in-process, read back what it wrote, and build
deliberately wrong methods."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from futurefill.bench import layer
from futurefill.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(*args: str) -> int:
    """``futurefill ...`` in this process; always one thread, no progress bar."""
    return main([*args, "--threads", "1", "--no-progress"])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > 1000, f"{path} is suspiciously small"


class _Off:
    """An engine whose outputs are off by ``rel`` of their size: a deliberately wrong method."""

    def __init__(self, engine, rel: float):
        self.engine, self.rel = engine, rel

    @property
    def nbytes(self) -> int:
        return self.engine.nbytes

    def prefill(self, u):
        return self.engine.prefill(u) * (1 + self.rel)

    def step(self, u_t):
        return self.engine.step(u_t) * (1 + self.rel)


def wrong(method: str, rel: float):
    """A stepper factory for ``method`` whose outputs are scaled by ``1 + rel``."""
    make = layer.STEPPERS[method]
    return lambda h, max_len, batch_size: _Off(make(h, max_len, batch_size), rel)


@pytest.fixture
def bench():
    """The helpers above, as one namespace."""
    return SimpleNamespace(
        run_cli=run_cli, read_json=read_json, read_csv=read_csv, assert_png=assert_png, wrong=wrong
    )


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"
