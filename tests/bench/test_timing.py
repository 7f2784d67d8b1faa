"""Timing: dyadic chunks, the paused collector, a timed call, the idle floor, device time."""

import gc
import itertools

import numpy as np
import torch

from futurefill.bench import tables, timing


def test_chunk_bounds_cover_every_step_once():
    for length in (1, 5, 16, 17, 100, 1024):
        bounds = timing.chunk_bounds(length)
        assert bounds[0][0] == 0 and bounds[-1][1] == length
        assert all(a < b for a, b in bounds)
        assert all(b == a2 for (_, b), (a2, _) in itertools.pairwise(bounds))
    assert timing.chunk_bounds(128) == [(0, 16), (16, 32), (32, 64), (64, 128)]


def test_paused_gc_restores_the_collector():
    assert gc.isenabled()
    with timing.paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with timing.paused_gc():
            pass
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()


def test_timed_runs_with_the_collector_paused():
    """A prefill is timed by ``timed``: a full collection there once took 186 ms of a 1.8 ms
    prefill (after torch.compile had made many objects) and budget-skipped the method."""
    enabled, seconds = timing.timed(gc.isenabled, torch.device("cpu"))
    assert enabled is False and seconds >= 0 and gc.isenabled()


def test_idle_steps_is_a_latency_distribution():
    idle = timing.idle_steps(100, torch.device("cpu"))
    assert idle["steps"] == 100 and "trace" not in idle
    assert 0 < idle["step_median_s"] <= idle["step_p999_s"] <= idle["step_max_s"]
    assert 0 <= idle["step_max_at"] < 100
    assert "one small op, 100 steps" in tables.idle_line({"idle_step": idle})


def test_timed_steps_with_device_time_falls_back_to_host_time_on_cpu():
    calls = []
    record = timing.timed_steps(calls.append, 40, torch.device("cpu"), lambda: 0, device_time=True)
    assert calls == list(range(40))
    assert record["step_clock"] == "host" and record["device_steps"] is record["steps"]
    figures = timing.device_latency(record["device_steps"], record["step_clock"], first=1)
    assert figures["step_clock"] == "host"
    assert figures["device_step_p50_s"] == float(np.median(record["steps"][1:]))
    assert figures["device_step_max_s"] == record["steps"][1:].max()
    plain = timing.timed_steps(calls.append, 4, torch.device("cpu"), lambda: 0)
    assert "device_steps" not in plain and "step_clock" not in plain
