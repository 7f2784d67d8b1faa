"""The harness: a new benchmark described in a few lines is swept, checked and written."""

import dataclasses

import torch

from futurefill.bench import common, plots
from futurefill.bench.options import Options, option
from futurefill.bench.runs import rel_err, repeat_runs
from futurefill.bench.tables import Section
from futurefill.bench.timing import timed_steps


def test_a_new_benchmark_is_one_description(tmp_path):
    """A running sum, stepped, described in a few lines: the harness sweeps it, catches the
    wrong method, and writes the table, JSON, CSV and plot."""

    @dataclasses.dataclass
    class SumConfig(Options):
        lengths: tuple[int, ...] = option((8, 16), "lengths", nargs="+")
        methods: tuple[str, ...] = option(("sum", "off"), "methods", nargs="+")

    def operands(config, longest):
        x = torch.randn(longest, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        return (lambda group, device, dtype: x), lambda x, cell: x[: cell.size]

    def measure(method, x, cell, setting):
        def run_once():
            out, total = torch.empty(cell.size, dtype=torch.float64), [0.0]

            def step(t):
                total[0] += float(x[t])
                out[t] = total[0]

            record = timed_steps(step, cell.size, setting.device, lambda: 8)
            return record, out * (1.001 if method == "off" else 1.0)

        return repeat_runs(run_once, lambda y: rel_err(y, x.cumsum(0)), setting)

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
        sections=(Section("", "{m}", "total_s", lambda r: f"{r['total_s']:.1e}"),),
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
