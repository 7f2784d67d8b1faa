"""The harness every benchmark runs in: a benchmark described, swept, and its report written.

A benchmark is a :class:`Benchmark`: what it sweeps (its cells), what one run does (``measure``)
and what it reports (table sections, CSV columns, plots); :func:`run` sweeps it and
:func:`write_report` writes its files (the table: :func:`futurefill.bench.tables.table`), by
these rules:

* wall clock after a sync, the garbage collector paused, steps timed in dyadic chunks and one by
  one (:mod:`futurefill.bench.timing`);
* every method runs once on a small warm-up cell first; each (method, cell) then runs up to
  ``repeats`` times and the median is reported; repeats stop early when another would push the
  cell past the budget (:mod:`futurefill.bench.runs`);
* a method whose projected time at the next cell exceeds the budget is skipped there and at every
  larger cell, the projection recorded (:mod:`futurefill.bench.budget`); a method whose outputs
  differ from the float64 reference by more than the tolerance fails, is not run at larger
  cells, and makes the command exit with status 1.

The options are :mod:`futurefill.bench.options`, the machine record :mod:`futurefill.bench.machine`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from futurefill.bench import plots
from futurefill.bench.budget import BudgetGate, ratios_at_largest, slopes
from futurefill.bench.machine import (
    contention_warning,
    load_average,
    machine_info,
    machine_line,
    resolve_device,
    torch_threads,
)
from futurefill.bench.options import DEFAULT_TOL, DTYPES, Options, check_options
from futurefill.bench.runs import Cell, Row, Setting
from futurefill.bench.tables import Section, fmt_bytes, table
from futurefill.bench.timing import idle_steps, timed
from futurefill.staging import staged

# Options, fmt_bytes, table and timed are here too for the callers that name them through this
# module (futurefill.cli.bench, scripts/gpu_check.py).
__all__ = [
    "AFTER_PROMPTS",
    "OVER_LENGTHS",
    "SETTING_COLUMNS",
    "Benchmark",
    "Options",
    "check_config",
    "csv_columns",
    "fmt_bytes",
    "report_files",
    "run",
    "table",
    "timed",
    "write_csv",
    "write_report",
]


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A benchmark, described: the command-line options, the sweep, one run, and the report.

    ``sizes`` name the fields of a cell and ``cells(config)`` lists them, increasing (as value
    tuples); ``warm(config)`` is the warm-up cell. ``operands(config, longest)`` returns
    ``(open_group, open_cell)``: for each group (a mixer, or ``None``) ``open_group(group,
    device, dtype)`` builds what its cells share, ``open_cell(state, cell)`` a cell's operands
    (inputs, the float64 reference). ``measure(method, operands, cell, setting)`` runs one method
    on one cell and returns its row; ``compare(rows, operands, tol)`` may check a cell's rows
    against each other. ``title`` and ``setting`` (formatted with the config) head the table.
    """

    name: str
    summary: str
    config: type
    sizes: tuple[str, ...]
    cells: Callable[[Any], list[tuple[int, ...]]]
    warm: Callable[[Any], tuple[int, ...]]
    operands: Callable[[Any, int], tuple[Callable, Callable]]
    measure: Callable[[str, Any, Cell, Setting], Row]
    peak_bytes: Callable[[Any], int]  # bytes of the largest run, by estimate
    title: str
    setting: str
    sections: tuple[Section, ...]
    plot_title: str
    plots: tuple[plots.Plot, ...]
    columns: tuple[str, ...]  # of <name>.csv (csv_columns), then row_fields and SETTING_COLUMNS
    ratios: tuple[tuple[str, str], ...] = ()
    ratio_key: str = "total_s"
    ratio_what: str = "time"
    tols: dict[torch.dtype, float] = dataclasses.field(default_factory=lambda: DEFAULT_TOL)
    checked: str = "from the float64 reference"
    compare: Callable[[list[Row], Any, float], None] | None = None
    notes: Callable[[dict[str, Any]], list[str]] | None = None
    row_fields: tuple[str, ...] = ()
    per_position: bool = False  # write <name>_per_position.csv
    check: Callable[[Any], None] | None = None  # ValueError for options that do not go together


# The fields of a sweep over generated lengths L (``config.lengths``, warmed up at ``warmup_len``
# or the shortest), which writes the mean step time per chunk of positions.
OVER_LENGTHS: dict[str, Any] = {
    "sizes": ("L",),
    "cells": lambda c: [(n,) for n in sorted(set(c.lengths))],
    "warm": lambda c: (min(c.warmup_len, *c.lengths),),
    "per_position": True,
}
# The fields of a sweep of K steps after prompts of P: the ratios compare decode times.
AFTER_PROMPTS: dict[str, Any] = {
    "sizes": ("P", "K"),
    "ratio_key": "decode_s",
    "ratio_what": "decode time",
}
SETTING_COLUMNS = ("dtype", "device", "threads")  # the last columns of every <name>.csv


def check_config(bench: Benchmark, config: Any) -> None:
    """ValueError naming the option when ``config`` is one ``bench`` cannot run, or whose
    report could not be written (a file of it in ``out`` is a directory)."""
    check_options(config)
    if bench.check is not None:
        bench.check(config)
    for name in report_files(bench, config.plots):
        if (path := Path(config.out) / name).exists() and not path.is_file():
            raise ValueError(f"--out: {path} exists and is not a file")


def run(bench: Benchmark, config: Any) -> dict[str, Any]:
    """The sweep: every method on every cell of every group; the report (machine, config, rows,
    failures, largest error, ratios, and with cells of ``L`` the fitted slopes)."""
    check_config(bench, config)
    device, dtype = resolve_device(config.device), DTYPES[config.dtype]
    tol = bench.tols[dtype] if config.tol is None else config.tol
    setting = Setting(config.repeats, config.budget, tol, device)
    warm_setting = Setting(1, math.inf, tol, device)
    cells = [Cell(dict(zip(bench.sizes, c, strict=True))) for c in bench.cells(config)]
    warm = Cell(dict(zip(bench.sizes, bench.warm(config), strict=True)))
    open_group, open_cell = bench.operands(config, max(c.size for c in [*cells, warm]))
    groups = getattr(config, "mixers", (None,))
    rows: list[Row] = []
    gate = BudgetGate(config.budget)

    def measure(method: str, operands: Any, cell: Cell, setting: Setting) -> Row:
        row = bench.measure(method, operands, cell, setting)
        steps = row.get("steps", cell.steps)  # a measure that timed fewer says so
        return row | {"per_token_s": row.get("decode_s", row["total_s"]) / steps}

    with (
        torch_threads(config.threads),
        tqdm(
            total=len(groups) * len(cells) * len(config.methods),
            desc=f"bench {bench.name}",
            unit="run",
            disable=not config.progress,
        ) as bar,
    ):
        machine = machine_info(device, dtype)
        # The idle floor over as many steps as the longest run times (``layer --steps``: fewer).
        longest = max(c.size for c in cells)
        steps = min(longest, getattr(config, "steps", None) or longest, 2**20)
        machine["idle_step"] = idle_steps(steps, device)
        if warning := contention_warning(machine):
            print(warning, file=sys.stderr)
        for group in groups:
            where, head = ("", {}) if group is None else (f"{group} ", {"mixer": group})
            bar.set_postfix_str(f"{where}setting up")
            state = open_group(group, device, dtype)
            for method in config.methods:
                measure(method, open_cell(state, warm), warm, warm_setting)
            for cell in cells:
                operands, done = open_cell(state, cell), []
                for method in config.methods:
                    bar.set_postfix_str(f"{where}{cell.label} {method}")
                    first = {**head, "method": method, **cell.fields}
                    if (blocked := gate.check((group, method), cell.size)) is not None:
                        rows.append({**first, "tol": tol, **blocked})
                    else:
                        done.append({**first, **measure(method, operands, cell, setting)})
                        rows.append(done[-1])
                    bar.update(1)
                if bench.compare is not None:
                    bench.compare(done, operands, tol)
                for row in done:
                    what, key = f"{where}{row['method']}", (group, row["method"])
                    gate.record(key, cell.size, row, what=what, at=cell.label, time_key="total_s")
                worst = max((r["max_rel_err"] for r in done), default=0.0)
                bar.write(
                    f"{where}{cell.label}: largest relative difference {bench.checked} {worst:.2e}"
                )
                del operands
            del state
    machine["load_average_1min_after"] = load_average()
    for row in rows:
        row.update({f: getattr(config, f) for f in bench.row_fields}, benchmark=bench.name)
        row.update(dtype=config.dtype, device=str(device), threads=machine["torch_threads"])
    report = {"benchmark": bench.name, "machine": machine, "config": dataclasses.asdict(config)}
    report.update(rows=rows, failures=gate.failures, tol=tol)
    report["max_rel_err"] = max((r.get("max_rel_err") or 0.0 for r in rows), default=0.0)
    report["ratios"] = ratios_at_largest(rows, bench.ratios, bench.sizes, bench.ratio_key)
    if bench.sizes == ("L",):
        report["slopes"] = slopes(rows, config)
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return str(value) if isinstance(value, torch.dtype | torch.device | Path) else value


def write_csv(path: Path, rows: Sequence[Row], columns: Sequence[str]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if row.get(k) is None else row[k] for k in columns} for row in rows)
    return path


def csv_columns(keys: str, values: str, extra: str = "") -> tuple[str, ...]:
    """A benchmark's columns of ``<name>.csv``: the cell's keys, its status and values, the
    agreement, the repeats, ``extra`` (each argument a space-separated list). The run's setting
    follows them in the file: the benchmark's ``row_fields``, then :data:`SETTING_COLUMNS`."""
    head = ("benchmark", *keys.split(), "status", *values.split(), "max_rel_err", "tol")
    return (*head, "repeats", *extra.split())


def report_files(bench: Benchmark, plot: bool) -> list[str]:
    """The names of the files :func:`write_report` writes (a plot without points is left out)."""
    names = [f"{bench.name}.json", f"{bench.name}.csv", f"{bench.name}_table.md"]
    names += [f"{bench.name}_per_position.csv"] if bench.per_position else []
    return names + ([f"{p.name}.png" for p in bench.plots] if plot else [])


def write_report(bench: Benchmark, report: dict[str, Any], out: Path, plot: bool) -> list[Path]:
    """Write ``<name>.json``, ``<name>.csv``, ``<name>_table.md``, with ``bench.per_position``
    ``<name>_per_position.csv`` (mean step time per chunk of every ok row) and with ``plot``
    the PNGs of ``bench.plots``: all of them, or (a failed write) none (:func:`staged`)."""
    name, rows = bench.name, report["rows"]
    with staged(out) as staging:
        (staging / f"{name}.json").write_text(
            json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n"
        )
        columns = (*bench.columns, *bench.row_fields, *SETTING_COLUMNS)
        write_csv(staging / f"{name}.csv", rows, columns)
        if bench.per_position:
            keys = (*("mixer",) * ("mixers" in report["config"]), "method", *bench.sizes)
            chunk_rows = [
                {**{k: r[k] for k in keys}, "start": a, "stop": b, "mean_step_s": s}
                for r in rows
                if r["status"] == "ok"
                for a, b, s in r["chunks"]
            ]
            columns = (*keys, "start", "stop", "mean_step_s")
            write_csv(staging / f"{name}_per_position.csv", chunk_rows, columns)
        (staging / f"{name}_table.md").write_text(table(bench, report))
        if plot:
            title = bench.plot_title.format(**report["config"])
            plots.figures(report, staging, title, machine_line(report["machine"]), bench.plots)
        written = sorted(path.name for path in staging.iterdir())
    return [out / name for name in written]
