"""Repeated runs of one cell: when to repeat, the agreement error, the row."""

import math

import numpy as np
import pytest
import torch

from futurefill.bench import runs


def test_should_repeat_respects_budget():
    assert runs.should_repeat([], 3, 0.0)
    assert runs.should_repeat([1.0], 3, 2.0)
    assert not runs.should_repeat([1.0, 1.0], 3, 2.5)
    assert not runs.should_repeat([0.1, 0.1, 0.1], 3, 100.0)


def test_rel_err_relative_to_output_scale():
    ref = torch.tensor([10.0, -20.0], dtype=torch.float64)
    assert runs.rel_err(ref.float(), ref) == 0.0
    assert runs.rel_err(ref + torch.tensor([0.0, 0.2], dtype=torch.float64), ref) == (
        pytest.approx(0.01)
    )
    assert math.isnan(runs.rel_err(torch.tensor([math.nan, 0.0]), ref))


def test_repeat_runs_row_from_records():
    setting = runs.Setting(repeats=3, budget=100.0, tol=1e-4, device=torch.device("cpu"))
    seconds = iter([3.0, 1.0, 2.0])

    def run_once():
        s = next(seconds)
        steps = np.array([s, s / 2, s / 4])
        record = {"seconds": s, "chunks": [(0, 3, s)], "steps": steps, "peak": 7}
        return record, s

    row = runs.repeat_runs(run_once, lambda out: 1e-6, setting)
    assert row["status"] == "ok" and row["repeats"] == 3 and row["times_s"] == [3.0, 1.0, 2.0]
    assert row["total_s"] == 2.0 and row["chunks"] == [(0, 3, 2.0 / 3)]
    assert row["step_max_s"] == 1.0 and row["peak_cache_bytes"] == 7  # the fastest run's steps
    seconds = iter([3.0, 1.0, 2.0])  # a run beyond the tolerance ends the repeats
    failed = runs.repeat_runs(run_once, lambda out: 1e-3, setting)
    assert failed["status"].startswith("FAILED (max rel err 1.00e-03") and failed["repeats"] == 1
