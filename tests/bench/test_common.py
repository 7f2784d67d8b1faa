"""Timing helpers, budget projection, slopes, tables and files of the benchmark suite."""

import itertools
import math

import numpy as np
import pytest
import torch

from futurefill.bench import common


def test_chunk_bounds_cover_every_step_once():
    for length in (1, 5, 16, 17, 100, 1024):
        bounds = common.chunk_bounds(length)
        assert bounds[0][0] == 0 and bounds[-1][1] == length
        assert all(a < b for a, b in bounds)
        assert all(b == a2 for (_, b), (a2, _) in itertools.pairwise(bounds))
    assert common.chunk_bounds(128) == [(0, 16), (16, 32), (32, 64), (64, 128)]


def test_fit_slope_recovers_power_law():
    sizes = [2**k for k in range(6, 12)]
    assert common.fit_slope(sizes, [3e-6 * n**2 for n in sizes]) == pytest.approx(2.0)
    assert common.fit_slope(sizes, [n * math.log2(n) ** 2 for n in sizes]) < 1.6
    assert common.fit_slope([64], [1.0]) is None


def test_project_time_is_conservative():
    assert common.project_time([], [], 128) is None
    # One point: quadratic growth.
    assert common.project_time([100], [1.0], 200) == pytest.approx(4.0)
    # Two points: the local exponent, clamped to at least 1.
    assert common.project_time([100, 200], [1.0, 8.0], 400) == pytest.approx(64.0)
    assert common.project_time([100, 200], [1.0, 1.0], 400) == pytest.approx(2.0)


def test_should_repeat_respects_budget():
    assert common.should_repeat([], 3, 0.0)
    assert common.should_repeat([1.0], 3, 2.0)
    assert not common.should_repeat([1.0, 1.0], 3, 2.5)
    assert not common.should_repeat([0.1, 0.1, 0.1], 3, 100.0)


def test_rel_err_relative_to_output_scale():
    ref = torch.tensor([10.0, -20.0], dtype=torch.float64)
    assert common.rel_err(ref.float(), ref) == 0.0
    assert common.rel_err(ref + torch.tensor([0.0, 0.2], dtype=torch.float64), ref) == (
        pytest.approx(0.01)
    )
    assert math.isnan(common.rel_err(torch.tensor([math.nan, 0.0]), ref))


def test_torch_threads_restored():
    before = torch.get_num_threads()
    with common.torch_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_machine_info_names_the_machine():
    info = common.machine_info(torch.device("cpu"), torch.float32)
    for key in ("cpu", "available_cores", "torch_threads", "torch_version", "device", "dtype"):
        assert info[key] not in (None, "")
    assert info["dtype"] == "float32"
    line = common.machine_line({**info, "load_average_1min": 0.7, "load_average_1min_after": 1.8})
    assert line.endswith("load 0.7 before, 1.8 after")


def test_cuda_device_refused_cleanly_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="CUDA is not available"):
        common.resolve_device("cuda")


def test_ratios_at_largest_common_size():
    rows = [
        {"method": "naive", "L": 64, "status": "ok", "total_s": 4.0},
        {"method": "naive", "L": 128, "status": "skipped (projected 9 s > budget 1 s)"},
        {"method": "continuous", "L": 64, "status": "ok", "total_s": 1.0},
        {"method": "continuous", "L": 128, "status": "ok", "total_s": 2.0},
    ]
    (r,) = common.ratios_at_largest(rows, [("naive", "continuous")], ("L",))
    assert r["L"] == 64 and r["ratio"] == pytest.approx(4.0)


def test_markdown_table_aligned():
    text = common.markdown_table(["a", "bb"], [["1", "2"], ["333", "4"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[1].startswith("|---")


def test_budget_gate_skips_projected_and_stops_failed_series():
    gate = common.BudgetGate(budget=10.0)
    assert gate.check("a", 100) is None  # nothing measured yet: run
    gate.record("a", 100, {"status": "ok", "t": 1.0}, what="a", at="L=100", time_key="t")
    assert gate.check("a", 200) is None  # projected 4 s (quadratic from one point)
    skipped = gate.check("a", 400)  # projected 16 s
    assert skipped["status"].startswith("skipped (projected 16") and skipped["repeats"] == 0
    assert skipped["projected_s"] == pytest.approx(16.0)
    gate.record("b", 100, {"status": "FAILED (x)"}, what="b", at="L=100", time_key="t")
    assert gate.check("b", 200) == {"status": "not run (failed at L=100)", "repeats": 0}
    assert gate.failures == ["b at L=100: FAILED (x)"]


def test_paused_gc_restores_the_collector():
    import gc

    assert gc.isenabled()
    with common.paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with common.paused_gc():
            pass
        assert not gc.isenabled()  # left as it was
    finally:
        gc.enable()


def test_timed_runs_with_the_collector_paused():
    """A prefill is timed by ``timed``: a full collection there once took 186 ms of a 1.8 ms
    prefill (after torch.compile had made many objects) and budget-skipped the method."""
    import gc

    enabled, seconds = common.timed(gc.isenabled, torch.device("cpu"))
    assert enabled is False and seconds >= 0 and gc.isenabled()


def test_check_options_refuses_what_the_command_line_refuses():
    from futurefill.bench.layer import LayerConfig

    common.check_options(LayerConfig(lengths=(8, 16), threads=1))
    for bad, message in [
        ({"lengths": (0,)}, "lengths: must be a length >= 1, got 0"),
        ({"lengths": ()}, "lengths: give at least one value"),
        ({"methods": ("fast",)}, "unknown methods"),
        ({"threads": 10**6}, "threads: must be a thread count in"),
        ({"budget": -1.0}, r"budget: must be a finite number in \(0, inf\)"),
        ({"dtype": "float8"}, "unknown dtype"),
    ]:
        with pytest.raises(ValueError, match=message):
            common.check_options(LayerConfig(**bad))


def test_repeat_runs_row_from_records():
    setting = common.Setting(repeats=3, budget=100.0, tol=1e-4, device=torch.device("cpu"))
    seconds = iter([3.0, 1.0, 2.0])

    def run_once():
        s = next(seconds)
        steps = np.array([s, s / 2, s / 4])
        record = {"seconds": s, "chunks": [(0, 3, s)], "steps": steps, "peak": 7}
        return record, s

    row = common.repeat_runs(run_once, lambda out: 1e-6, setting)
    assert row["status"] == "ok" and row["repeats"] == 3 and row["times_s"] == [3.0, 1.0, 2.0]
    assert row["total_s"] == 2.0 and row["chunks"] == [(0, 3, 2.0 / 3)]
    assert row["step_max_s"] == 1.0 and row["peak_cache_bytes"] == 7  # the fastest run's steps
    seconds = iter([3.0, 1.0, 2.0])  # a run beyond the tolerance ends the repeats
    failed = common.repeat_runs(run_once, lambda out: 1e-3, setting)
    assert failed["status"].startswith("FAILED (max rel err 1.00e-03") and failed["repeats"] == 1


def test_idle_steps_is_a_latency_distribution():
    idle = common.idle_steps(100, torch.device("cpu"))
    assert idle["steps"] == 100 and "trace" not in idle
    assert 0 < idle["step_median_s"] <= idle["step_p999_s"] <= idle["step_max_s"]
    assert 0 <= idle["step_max_at"] < 100
    assert "one small op, 100 steps" in common.idle_line({"idle_step": idle})


def test_a_new_benchmark_is_one_description(tmp_path):
    """A running sum, stepped, described in a few lines: the harness sweeps it, catches the
    wrong method, and writes the table, JSON, CSV and plot."""
    import dataclasses

    from futurefill.bench import plots

    @dataclasses.dataclass
    class SumConfig(common.Options):
        lengths: tuple[int, ...] = common.option((8, 16), "lengths", nargs="+")
        methods: tuple[str, ...] = common.option(("sum", "off"), "methods", nargs="+")

    def operands(config, longest):
        x = torch.randn(longest, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        return (lambda group, device, dtype: x), lambda x, cell: x[: cell.size]

    def measure(method, x, cell, setting):
        def run_once():
            out, total = torch.empty(cell.size, dtype=torch.float64), [0.0]

            def step(t):
                total[0] += float(x[t])
                out[t] = total[0]

            record = common.timed_steps(step, cell.size, setting.device, lambda: 8)
            return record, out * (1.001 if method == "off" else 1.0)

        return common.repeat_runs(run_once, lambda y: common.rel_err(y, x.cumsum(0)), setting)

    bench = common.Benchmark(
        name="sum",
        summary="a running sum",
        config=SumConfig,
        sizes=("L",),
        cells=lambda c: [(n,) for n in c.lengths],
        warm=lambda c: (4,),
        operands=operands,
        measure=measure,
        peak_bytes=lambda c: 0,
        title="Running sum",
        setting="{dtype}",
        sections=(common.Section("", "{m}", "total_s", lambda r: f"{r['total_s']:.1e}"),),
        plot_title="",
        plots=(plots.Plot("sum_time", "L", "total_s", "Time"),),
        columns=common.csv_columns("method L", "total_s"),
        ratios=(("off", "sum"),),
        per_position=True,
    )
    config = SumConfig(threads=1, progress=False, repeats=1)
    report = common.run(bench, config)
    status = {(r["method"], r["L"]): r["status"] for r in report["rows"]}
    assert status[("sum", 8)] == status[("sum", 16)] == "ok"
    assert status[("off", 8)].startswith("FAILED") and status[("off", 16)].startswith("not run")
    assert report["slopes"]["sum"]["points"] == 2 and report["failures"]
    written = {p.name for p in common.write_report(bench, report, tmp_path, plot=True)}
    assert written == {
        "sum.json",
        "sum.csv",
        "sum_per_position.csv",
        "sum_table.md",
        "sum_time.png",
    }
    assert "| L  | sum" in (tmp_path / "sum_table.md").read_text()
