"""The harness every benchmark runs in: options, machine record, timing, budget, agreement, report.

A benchmark is a :class:`Benchmark`: what it sweeps (its cells), what one run does (``measure``)
and what it reports (table sections, CSV columns, plots); :func:`run`, :func:`table` and
:func:`write_report` do the rest, by these rules:

* wall clock with :func:`time.perf_counter`, after :func:`sync` (``torch.cuda.synchronize`` on a
  CUDA device, nothing on CPU), so queued GPU work is counted where it belongs; Python's garbage
  collector paused while a run is timed (:func:`paused_gc`);
* steps are timed in dyadic chunks (:func:`chunk_bounds`) and one by one (the latency
  distribution, :func:`latency`);
* every method runs once on a small warm-up cell first; each (method, cell) then runs up to
  ``repeats`` times and the median is reported; repeats stop early when another would push the
  cell past the budget;
* a method whose projected time at the next cell exceeds the budget is skipped there and at every
  larger cell, the projection recorded (:func:`project_time`); a method whose outputs differ from
  the float64 reference by more than the tolerance fails, is not run at larger cells, and makes
  the command exit with status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from futurefill.bench import plots
from futurefill.cli import options as argtypes
from futurefill.staging import staged

DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
# Agreement tolerance: largest |y - y_ref| over the largest |y_ref|, y_ref computed in float64.
# float32 FFT and direct sums stay near 1e-6 at L = 2^16; half precisions are limited by rounding
# the outputs to 8 (bfloat16) or 11 (float16) significant bits.
DEFAULT_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}
LATENCY_BUCKETS = 256  # positions are cut into this many buckets for the latency trace
LENGTH = argtypes.bounded_int(1, None, "a length")
SIZE = argtypes.bounded_int(1, 2**20, "a size")
POSITIVE = argtypes.finite_float(0, low_open=True)


# ------------------------------------------------------------------------------ options


def option(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A config field that is also the command-line option ``--field-name``: its help line and
    what :meth:`argparse.ArgumentParser.add_argument` needs besides (``type``, ``choices``,
    ``nargs``, ``aliases``). A bool field is the flag ``--no-field-name``."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_kwargs})


def check_options(config: Any) -> None:
    """ValueError naming the field when a value is one its option would refuse (for callers of
    the Python API; the command line refuses it while parsing)."""
    for field in dataclasses.fields(config):
        value, meta = getattr(config, field.name), field.metadata
        values = value if isinstance(value, tuple | list) else (value,)
        if value is None or not meta:
            continue
        if "nargs" in meta and not values:
            raise ValueError(f"{field.name}: give at least one value")
        unknown = [v for v in values if "choices" in meta and v not in meta["choices"]]
        if unknown:
            raise ValueError(f"unknown {field.name} {unknown}; expected some of {meta['choices']}")
        for v in values if "type" in meta else ():
            try:
                meta["type"](str(v))
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"{field.name}: {exc}") from None


@dataclasses.dataclass
class Options:
    """The options every benchmark has (the CLI flags have the same names)."""

    dtype: str = option("float32", "working precision", choices=tuple(DTYPES))
    device: str = option("cpu", "cpu, cuda or cuda:N", type=argtypes.device_name)
    threads: int | None = option(
        None, "torch intra-op threads, 1 to the cores (default: all)", type=argtypes.threads
    )
    repeats: int = option(3, "runs per cell; the median is reported", type=argtypes.bounded_int(1))
    budget: float = option(30.0, "seconds one run may take (projected)", type=POSITIVE)
    warmup_len: int = option(32, "length of every method's warm-up run", type=LENGTH)
    tol: float | None = option(
        None, "agreement tolerance relative to the output scale (default: by dtype)", type=POSITIVE
    )
    seed: int = option(0, "seed of the random inputs and weights", type=argtypes.seed)
    out: Path = option(  # noqa: RUF009 (a Path is immutable)
        Path("results"), "directory for JSON, CSV, table and PNGs", type=argtypes.output_dir
    )
    progress: bool = option(True, "progress bars on stderr")
    plots: bool = option(True, "PNG plots")


# ------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo where there is one, else what :mod:`platform` says."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def git_commit() -> str | None:
    """``HEAD`` of the repository this package lives in, with ``-dirty`` if it has local edits."""

    def git(*args: str) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            here = Path(__file__).resolve().parent
            done = subprocess.run(
                ["git", *args], cwd=here, capture_output=True, text=True, timeout=10
            )
            return done.stdout.strip() if done.returncode == 0 else None
        return None

    head = git("rev-parse", "HEAD")
    return head and head + ("-dirty" if git("status", "--porcelain", "-uno") else "")


def load_average() -> float | None:
    with contextlib.suppress(AttributeError, OSError):  # not on Windows
        return round(os.getloadavg()[0], 2)
    return None


def machine_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """What a reader needs to interpret the timings: CPU, cores, threads, versions, device, load."""
    import futurefill

    now = datetime.datetime.now(datetime.timezone.utc)
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "logical_cores": os.cpu_count(),
        "available_cores": argtypes.available_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "futurefill_version": futurefill.__version__,
        "git_commit": git_commit(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "timestamp_utc": now.isoformat(timespec="seconds"),
        "load_average_1min": load_average(),
    }
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda_version=torch.version.cuda)
    return info


def contention_warning(info: dict[str, Any]) -> str | None:
    """A warning when other processes already keep the cores busy: with several torch threads,
    every parallel op waits for its slowest thread, and a descheduled one stalls it for a
    scheduler time slice (milliseconds), which swamps the microseconds of a decoding step."""
    load, cores, threads = info["load_average_1min"], info["available_cores"], info["torch_threads"]
    if load is None or load < 0.5 * cores:
        return None
    text = f"warning: load average {load:.1f} on {cores} cores before the benchmark: timings noisy"
    if threads > 1:
        text += f"; {threads} torch threads wait for descheduled ones (try --threads 1)"
    return text


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, for table headers and plot titles."""
    line = (
        f"{info.get('gpu') or info['cpu']} | {info['device']} {info['dtype']} | "
        f"{info['torch_threads']} threads ({info['available_cores']} cores) | "
        f"torch {info['torch_version']}"
    )
    if info.get("load_average_1min") is not None:
        line += f" | load {info['load_average_1min']:.1f}"
        if info.get("load_average_1min_after") is not None:
            line += f" before, {info['load_average_1min_after']:.1f} after"
    return line


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (default: every available core); restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(argtypes.available_cores() if threads is None else threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off while a run is timed (as :mod:`timeit` does): the
    outputs a run keeps for its agreement check, one tensor a step, would otherwise set off full
    collections of about 100 ms at random steps (seen at L = 2^16 and 2^18)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# ------------------------------------------------------------------------------ timing


def sync(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chunk_bounds(length: int, first: int = 16) -> list[tuple[int, int]]:
    """Dyadic chunks of steps ``[0, first), [first, 2 first), [2 first, 4 first), ...``: every
    chunk after the first is as long as all steps before it, so the mean step time per chunk shows
    how the cost per token grows with position (a dyadic schedule's FFTs between n and 2n fall in
    chunk [n, 2n))."""
    bounds, start, stop = [], 0, min(first, length)
    while start < length:
        bounds.append((start, stop))
        start, stop = stop, min(2 * stop, length)
    return bounds


def timed_steps(
    step: Callable[[int], Any], length: int, device: torch.device, nbytes: Callable[[], int]
) -> dict[str, Any]:
    """Call ``step(t)`` for t = 0 .. length - 1 (it keeps its own outputs): a timer around every
    step (host time: on CUDA a step's kernels may run after it returns) and every dyadic chunk
    (after a sync); ``nbytes()`` sampled between chunks, untimed. The garbage collector is paused.

    Returns the record of the run: ``seconds``, ``chunks`` [(start, stop, seconds)], ``peak``
    bytes and ``steps`` (every step's time, an array)."""
    chunks, steps, peak, clock = [], np.empty(length), nbytes(), time.perf_counter
    with paused_gc():
        sync(device)
        for start, stop in chunk_bounds(length):
            began = clock()
            for t in range(start, stop):
                before = clock()
                step(t)
                steps[t] = clock() - before
            sync(device)
            chunks.append((start, stop, clock() - began))
            peak = max(peak, nbytes())
    return {"seconds": sum(c for _, _, c in chunks), "chunks": chunks, "peak": peak, "steps": steps}


def add_prefill(record: dict[str, Any], prompt_len: int, prefill: float, nbytes: int) -> None:
    """Make the :func:`timed_steps` record of the steps after a prefill of ``prompt_len``
    positions (``prefill`` seconds, ``nbytes`` held after it) the record of the whole run: chunks
    at absolute positions, ``decode`` the steps' seconds, ``seconds`` and ``peak`` with the
    prefill's."""
    record["chunks"] = [(a + prompt_len, b + prompt_len, s) for a, b, s in record["chunks"]]
    record.update(prefill=prefill, decode=record["seconds"], after_prefill=nbytes)
    record.update(seconds=prefill + record["seconds"], peak=max(record["peak"], nbytes))


def timed(func: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``func()`` and its time, synced before and after; the garbage collector paused."""
    with paused_gc():
        sync(device)
        began = time.perf_counter()
        result = func()
        sync(device)
        return result, time.perf_counter() - began


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def should_repeat(times: Sequence[float], repeats: int, budget: float) -> bool:
    """Whether to run another repeat: fewer than ``repeats`` so far and it fits in the budget."""
    return len(times) < repeats and sum(times) + max(times, default=0.0) <= budget


def latency(step_times: np.ndarray, first: int = 0) -> dict[str, Any]:
    """The distribution of the times of steps ``first ..``: median, p99, p99.9, max (and where),
    and a trace of the largest and the median step per bucket of positions, for the plot. (A
    model's first token builds its decoding state: ``first=1`` leaves it out.)"""
    times = step_times[first:]
    buckets = np.array_split(times, min(LATENCY_BUCKETS, len(times)))
    starts = first + np.cumsum([0] + [len(b) for b in buckets[:-1]])
    return {
        "step_median_s": float(np.median(times)),
        "step_p99_s": float(np.percentile(times, 99)),
        "step_p999_s": float(np.percentile(times, 99.9)),
        "step_max_s": float(times.max()),
        "step_max_at": first + int(times.argmax()),
        "trace": [
            (int(a), float(b.max()), float(np.median(b)))
            for a, b in zip(starts, buckets, strict=True)
        ],
    }


def idle_steps(steps: int, device: torch.device) -> dict[str, Any]:
    """The latency of ``steps`` steps that each run one small fixed op (a (1, 128) multiply),
    timed like a method's steps: what this machine's scheduler, interrupts and timer alone do to
    a loop of that length. A method's largest step is read against this floor (on a shared
    2-core VM an idle loop of 2^18 such steps has a largest step of 80-100x its median)."""
    x = torch.ones(1, 128, device=device)
    out, times, clock = torch.empty_like(x), np.empty(steps), time.perf_counter
    with paused_gc():
        for t in range(steps):
            before = clock()
            torch.mul(x, x, out=out)
            times[t] = clock() - before
    return {"steps": steps} | {k: v for k, v in latency(times).items() if k != "trace"}


# ------------------------------------------------------------------------------ scaling, budget


def fit_slope(sizes: Sequence[float], times: Sequence[float]) -> float | None:
    """Least-squares slope of log(time) against log(size); None with fewer than two sizes."""
    pairs = [(s, t) for s, t in zip(sizes, times, strict=True) if s > 0 and t and t > 0]
    if len({s for s, _ in pairs}) < 2:
        return None
    return float(np.polyfit(np.log([s for s, _ in pairs]), np.log([t for _, t in pairs]), 1)[0])


def project_time(sizes: Sequence[float], times: Sequence[float], size: float) -> float | None:
    """Projected time at ``size`` from the measured (size, time) points, conservatively: from the
    largest point with the growth exponent of the last two, clamped to [1, 3] (small sizes are
    per-step overhead, exponent about 1: the clamp keeps a flat start from being trusted); with
    a single point, exponent 2 (the worst of the online methods), erring towards skipping."""
    if not sizes:
        return None
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    last, exponent = order[-1], 2.0
    if len(order) >= 2:
        prev = order[-2]
        if sizes[prev] < sizes[last] and times[prev] > 0 and times[last] > 0:
            local = math.log(times[last] / times[prev]) / math.log(sizes[last] / sizes[prev])
            exponent = min(3.0, max(1.0, local))
    return float(times[last] * (size / sizes[last]) ** exponent)


class BudgetGate:
    """Which cells of a sweep run. Each series (``key``: a method, or a (mixer, method) pair)
    visits sizes in increasing order: :meth:`check` before a cell says whether to run it;
    :meth:`record` after it feeds the cell's time to later projections, or, when its agreement
    check failed, stops the series and collects the failure in :attr:`failures`."""

    def __init__(self, budget: float):
        self.budget = budget
        self.failures: list[str] = []
        self._measured: dict[Any, tuple[list[float], list[float]]] = {}
        self._stopped: dict[Any, str] = {}

    def check(self, key: Any, size: float) -> dict[str, Any] | None:
        """None to run the cell; else the fields of its row (status, repeats 0, projected_s)."""
        if key in self._stopped:
            return {"status": self._stopped[key], "repeats": 0}
        projected = project_time(*self._measured.get(key, ([], [])), size)
        if projected is not None and projected > self.budget:
            status = f"skipped (projected {projected:.3g} s > budget {self.budget:g} s)"
            return {"status": status, "repeats": 0, "projected_s": projected}
        return None

    def record(
        self, key: Any, size: float, row: dict[str, Any], *, what: str, at: str, time_key: str
    ) -> None:
        """After a run: ``what`` names the series and ``at`` the cell in failure messages."""
        if row["status"] == "ok":
            sizes, times = self._measured.setdefault(key, ([], []))
            sizes.append(size)
            times.append(row[time_key])
        else:
            self.failures.append(f"{what} at {at}: {row['status']}")
            self._stopped[key] = f"not run (failed at {at})"


def ratios_at_largest(
    rows: Sequence[dict[str, Any]],
    pairs: Sequence[tuple[str, str]],
    size_keys: Sequence[str],
    time_key: str = "total_s",
) -> list[dict[str, Any]]:
    """Time ratio numerator/denominator of each method pair at the largest size both reached, per
    mixer where rows have one. A size is the tuple of ``row[k]`` for ``size_keys``; the largest
    has the largest sum (then tuple). Only rows with status ``ok`` count."""
    out = []
    for mixer in dict.fromkeys(r.get("mixer") for r in rows):
        ok = {
            (r["method"], tuple(r[k] for k in size_keys)): r[time_key]
            for r in rows
            if r["status"] == "ok" and r.get("mixer") == mixer
        }
        for num, den in pairs:
            if both := [size for (m, size) in ok if m == num and (den, size) in ok]:
                size = max(both, key=lambda s: (sum(s), s))
                out.append(
                    ({} if mixer is None else {"mixer": mixer})
                    | {
                        "numerator": num,
                        "denominator": den,
                        **dict(zip(size_keys, size, strict=True)),
                    }
                    | {"time_key": time_key, "ratio": ok[(num, size)] / ok[(den, size)]}
                )
    return out


def slopes(rows: Sequence[dict[str, Any]], config: Any) -> dict[str, Any]:
    """Per method (per mixer, then method, where the config has mixers): the fitted log-log slope
    of total time against L over every L, and over L >= ``config.slope_from`` when set."""

    def entry(mixer: str | None, method: str) -> dict[str, Any]:
        ok = [
            (r["L"], r["total_s"])
            for r in rows
            if (r.get("mixer"), r["method"], r["status"]) == (mixer, method, "ok")
        ]
        sizes = [x for x, _ in ok]
        out = {"all": fit_slope(sizes, [t for _, t in ok]), "points": len(ok)}
        out.update(L_min=min(sizes, default=None), L_max=max(sizes, default=None))
        if (slope_from := getattr(config, "slope_from", None)) is not None:
            tail = [(x, t) for x, t in ok if x >= slope_from]
            out["from"] = slope_from
            out["tail"] = fit_slope([x for x, _ in tail], [t for _, t in tail])
        return out

    if not hasattr(config, "mixers"):
        return {m: entry(None, m) for m in config.methods}
    return {x: {m: entry(x, m) for m in config.methods} for x in config.mixers}


# ------------------------------------------------------------------------------ one cell


@dataclasses.dataclass(frozen=True)
class Cell:
    """One size of a sweep: ``fields`` go into its rows (``{"L": 64}``, ``{"P": 8, "K": 4}``);
    their sum drives the budget projection."""

    fields: dict[str, int]

    @property
    def size(self) -> int:
        return sum(self.fields.values())

    @property
    def steps(self) -> int:
        """Steps one run takes: ``K`` after a prompt, else ``L``, else the size."""
        return self.fields.get("K", self.fields.get("L", self.size))

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.fields.items())


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the sweep hands each measurement besides the method and the operands."""

    repeats: int
    budget: float
    tol: float
    device: torch.device


def repeat_runs(
    run_once: Callable[[], tuple[dict[str, Any], Any]],
    check: Callable[[Any], float],
    setting: Setting,
) -> dict[str, Any]:
    """Run ``run_once()`` (one timed run: its record, with ``seconds``, and its outputs) up to
    ``setting.repeats`` times within the budget; ``check(outputs)`` gives the first run's error
    (outputs are deterministic), and a run beyond the tolerance ends the repeats.

    Returns the row's measured fields: status, error, repeats, the median of ``seconds`` as
    ``total_s`` and its list ``times_s``, the median chunks, setup and (with ``prefill`` in the
    records) prefill/decode times, peak bytes, and the fastest run's step latency."""
    records: list[dict[str, Any]] = []
    err = math.nan
    while should_repeat([r["seconds"] for r in records], setting.repeats, setting.budget):
        record, outputs = run_once()
        records.append(record)
        if len(records) == 1:
            err = check(outputs)
            if not err <= setting.tol:  # also catches NaN
                break
        del outputs
    times = [r["seconds"] for r in records]
    ok = "ok" if err <= setting.tol else f"FAILED (max rel err {err:.2e} > tol {setting.tol:.1e})"
    row: dict[str, Any] = {"status": ok, "max_rel_err": err, "tol": setting.tol}
    row.update(total_s=median(times), repeats=len(records), times_s=times)
    row["chunks"] = [
        (a, b, median([r["chunks"][i][2] for r in records]) / (b - a))
        for i, (a, b, _) in enumerate(records[0]["chunks"])
    ]
    if "setup" in records[0]:
        row["setup_s"] = median([r["setup"] for r in records])
    if "prefill" in records[0]:
        prefills, decodes = [r["prefill"] for r in records], [r["decode"] for r in records]
        row.update(prefill_s=median(prefills), decode_s=median(decodes))
        row.update(prefill_times_s=prefills, decode_times_s=decodes)
        row["cache_bytes_after_prefill"] = records[-1]["after_prefill"]
    row["peak_cache_bytes"] = records[-1].get("peak")  # None: holds no cache (offline)
    fastest = min(records, key=lambda r: r["seconds"])
    if "steps" in fastest:
        row.update(latency(fastest["steps"], first=fastest.get("first_step", 0)))
    return row


def rel_err(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |actual - reference| relative to the largest |reference| (computed in float64)."""
    reference = reference.to(torch.float64)
    diff = (actual.to(torch.float64) - reference).abs().max().item()
    return float(diff / max(reference.abs().max().item(), 1e-300))


# ------------------------------------------------------------------------------ a benchmark


Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Section:
    """One table of a report: a line per size, a column per method holding ``key`` (a method
    with an ok row lacking it is left out), ``cell(row)`` for an ok row; with ``ratios`` the
    benchmark's ratio pairs, with ``slopes`` a row of fitted slopes."""

    caption: str
    column: str  # a column's header, "{m}" standing for the method
    key: str
    cell: Callable[[Row], str]
    ratios: bool = False
    slopes: bool = False


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
    columns: tuple[str, ...]  # of <name>.csv
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
        return row | {"per_token_s": row.get("decode_s", row["total_s"]) / cell.steps}

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
        machine["idle_step"] = idle_steps(min(max(c.size for c in cells), 2**20), device)
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


# ------------------------------------------------------------------------------ report


def table(bench: Benchmark, report: dict[str, Any]) -> str:
    """The terminal/Markdown summary: a heading, the machine, the setting, each section's table
    (per mixer where the benchmark has mixers), then the ratios, skips and agreement."""
    cfg = report["config"]
    pairs = [p for p in bench.ratios if p[0] in cfg["methods"] and p[1] in cfg["methods"]]
    lines = [
        f"## {bench.title.format(**cfg)} (median of up to {cfg['repeats']} runs)",
        "",
        f"Machine: {machine_line(report['machine'])}",
        bench.setting.format(**cfg),
        "",
    ]
    for group in cfg.get("mixers", (None,)):
        lines += [] if group is None else [f"### mixer {group}", ""]
        for section in bench.sections:
            lines += _section(bench, section, report, group, pairs)
    lines += notes(report, bench.sizes, what=bench.ratio_what, checked=bench.checked)
    lines += bench.notes(report) if bench.notes else []
    return "\n".join(lines) + "\n"


def _section(
    bench: Benchmark,
    section: Section,
    report: dict[str, Any],
    group: str | None,
    pairs: Sequence[tuple[str, str]],
) -> list[str]:
    """The lines of one section of ``group``'s rows: its caption and its table."""
    cfg, pairs = report["config"], pairs if section.ratios else ()
    mine = [r for r in report["rows"] if r.get("mixer") == group]
    ok = [r for r in mine if r["status"] == "ok"]
    shown = [
        m
        for m in cfg["methods"]
        if all(r.get(section.key) is not None for r in ok if r["method"] == m)
    ]
    columns = [(section.column.format(m=m), m, section.cell) for m in shown]
    header, body = method_grid(mine, bench.sizes, columns, pairs, bench.ratio_key)
    fitted = report.get("slopes", {}) if section.slopes else {}
    fitted = fitted if group is None else fitted.get(group, {})
    for name, key in (("slope", "all"), (f"slope L>={cfg.get('slope_from')}", "tail")):
        if fitted and (key == "all" or cfg.get("slope_from") is not None):
            values = [fitted[m].get(key) for m in shown]
            values = ["-" if v is None else f"{v:.2f}" for v in values]
            body.append([name, *values, *[""] * len(pairs)])  # slopes come with sizes ("L",)
    idle = idle_line(report["machine"])
    caption = [section.caption.format(idle=idle), ""] if section.caption else []
    return [*caption, markdown_table(header, body), ""]


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


def csv_columns(keys: str, values: str, extra: str = "", setting: str = "") -> tuple[str, ...]:
    """The columns of ``<name>.csv``: the cell's keys, its status and values, the agreement, the
    repeats, ``extra``, then the run's setting (each argument a space-separated list)."""
    head = ("benchmark", *keys.split(), "status", *values.split(), "max_rel_err", "tol")
    return (*head, "repeats", *extra.split(), *setting.split(), "dtype", "device", "threads")


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
        write_csv(staging / f"{name}.csv", rows, bench.columns)
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


# ------------------------------------------------------------------------------ tables


def notes(
    report: dict[str, Any], size_keys: Sequence[str], *, what: str = "time", checked: str
) -> list[str]:
    """The bullet lines under a table: each ratio at the largest size both methods reached,
    each budget skip, and the agreement check."""

    def at(r: Row) -> str:
        return ", ".join(f"{k}={r[k]}" for k in size_keys)

    def who(r: Row) -> str:
        return f"{r['mixer']}: " if "mixer" in r else ""

    lines = [
        f"- {who(r)}{r['numerator']}/{r['denominator']} {what} at the largest size both reached "
        f"({at(r)}): {r['ratio']:.2f}x"
        for r in report["ratios"]
    ]
    lines += [
        f"- {who(r)}{r['method']} at {at(r)}: {r['status']}"
        for r in report["rows"]
        if r["status"].startswith("skipped")
    ]
    failed = "; ".join(report["failures"])
    lines.append(
        f"- agreement: largest relative difference {checked} {report['max_rel_err']:.2e} "
        f"(tol {report['tol']:.0e})" + (f"; FAILED: {failed}" if failed else "")
    )
    return lines


Column = tuple[str, str, Callable[[Row], str]]  # header, method, format of an ok row


def method_grid(
    rows: Sequence[Row],
    keys: Sequence[str],
    columns: Sequence[Column],
    pairs: Sequence[tuple[str, str]] = (),
    ratio_key: str = "total_s",
) -> tuple[list[str], list[list[str]]]:
    """Header and body of a table with a line per value of the rows' ``keys``: per column the
    formatted row of its method (the first word of its status when not ok), then for each pair
    ``a/b`` the ratio of their ``ratio_key`` where both are ok."""
    by = {(r["method"], *(r[k] for k in keys)): r for r in rows}
    header = [*keys, *(name for name, _, _ in columns), *(f"{a}/{b}" for a, b in pairs)]
    body = []
    for size in sorted({tuple(r[k] for k in keys) for r in rows}):
        line = [str(v) for v in size]
        for _, method, fmt in columns:
            r = by[(method, *size)]
            line.append(fmt(r) if r["status"] == "ok" else r["status"].split(" ")[0])
        for a, b in pairs:
            ra, rb = by[(a, *size)], by[(b, *size)]
            both = ra["status"] == "ok" and rb["status"] == "ok"
            line.append(f"{ra[ratio_key] / rb[ratio_key]:.2f}x" if both else "-")
        body.append(line)
    return header, body


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table, padded so it reads on a terminal and renders in Markdown."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    )


def latency_cell(row: Row) -> str:
    """A table cell: median / p99.9 / max step time (and max over median)."""
    times = (row["step_median_s"], row["step_p999_s"], row["step_max_s"])
    spread = row["step_max_s"] / row["step_median_s"]
    return " / ".join(fmt_seconds(t) for t in times) + f" ({spread:.0f}x)"


def idle_line(machine: dict[str, Any]) -> str:
    """A sentence on the idle step floor of the machine record, for a latency table."""
    idle = machine["idle_step"]
    return (
        f"An idle step on this machine (one small op, {idle['steps']} steps timed the same way): "
        f"{latency_cell(idle)}."
    )


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.0f} s" if seconds >= 100 else f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} µs"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    exponent = min(3, (n.bit_length() - 1) // 10)
    return f"{n / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"
