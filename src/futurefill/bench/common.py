"""Shared pieces of the benchmarks: machine record, timing, budget, agreement check, output files.

Timing rules every benchmark follows:

* wall clock with :func:`time.perf_counter`, after :func:`sync` (``torch.cuda.synchronize`` on a
  CUDA device, nothing on CPU), so queued GPU work is counted where it belongs;
* steps are timed in chunks (:func:`chunk_bounds`), never one timer call per step, so the timer
  costs O(log L) calls per run;
* each (method, size) runs ``repeats`` times and the median is reported; repeats stop early when
  another one would push that cell past the budget;
* a method whose projected time for the next size exceeds the budget is skipped there and at every
  larger size, and the skip is recorded with the projection (:func:`project_time`).
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from futurefill.argtypes import available_cores

DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}

# Agreement tolerance: largest |y - y_ref| over the largest |y_ref|, y_ref computed in float64.
# float32 FFT and direct sums stay near 1e-6 at L = 2^16; half precisions are limited by rounding
# the outputs to 8 (bfloat16) or 11 (float16) significant bits.
LATENCY_BUCKETS = 256  # positions are cut into this many buckets for the latency trace
DEFAULT_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}


class AgreementError(RuntimeError):
    """A method's outputs differ from the reference by more than the tolerance."""


# ------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, sysctl on macOS, else platform."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
    return platform.processor() or platform.machine() or "unknown"


def git_commit() -> str | None:
    """``HEAD`` of the repository this package lives in, with ``-dirty`` if it has local edits."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """What a reader needs to interpret the timings: CPU, cores, threads, versions, device."""
    import futurefill

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "logical_cores": os.cpu_count(),
        "available_cores": available_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "futurefill_version": futurefill.__version__,
        "git_commit": git_commit(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with contextlib.suppress(AttributeError, OSError):  # not on Windows
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    return info


def contention_warning(info: dict[str, Any]) -> str | None:
    """A warning when other processes already keep the cores busy (timings will be noisy).

    With several torch threads, every parallel region waits for its slowest thread; a thread
    descheduled by another process stalls the region for a scheduler time slice (milliseconds),
    which swamps the microseconds a decoding step takes.
    """
    load = info.get("load_average_1min")
    cores = info["available_cores"]
    if load is None or load < 0.5 * cores:
        return None
    text = (
        f"warning: load average {load:.1f} on {cores} cores before the benchmark: other processes "
        "compete for the CPU, so timings are noisy"
    )
    if info["torch_threads"] > 1:
        text += (
            f"; with {info['torch_threads']} torch threads a descheduled thread stalls every "
            "parallel op (try --threads 1 on a busy machine)"
        )
    return text


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, for table headers and plot titles."""
    where = info.get("gpu") or info["cpu"]
    line = (
        f"{where} | {info['device']} {info['dtype']} | {info['torch_threads']} threads "
        f"({info['available_cores']} cores) | torch {info['torch_version']}"
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
    wanted = available_cores() if threads is None else int(threads)
    if wanted < 1:
        raise ValueError(f"threads must be >= 1, got {wanted}")
    torch.set_num_threads(wanted)
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
    """Dyadic chunks of steps ``[0, first), [first, 2 first), [2 first, 4 first), ...``.

    Every chunk after the first is as long as all steps before it, so the mean step time per chunk
    shows how the cost per token grows with position while the timer runs only O(log L) times.
    Chunk ``[n, 2n)`` contains exactly the FFT updates a dyadic schedule does between n and 2n.
    """
    bounds = []
    start, stop = 0, min(first, length)
    while start < length:
        bounds.append((start, stop))
        start, stop = stop, min(2 * stop, length)
    return bounds


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def should_repeat(times: Sequence[float], repeats: int, budget: float) -> bool:
    """Whether to run another repeat: fewer than ``repeats`` so far and it fits in the budget."""
    if len(times) >= repeats:
        return False
    return sum(times) + max(times, default=0.0) <= budget


# ------------------------------------------------------------------------------ scaling


def fit_slope(sizes: Sequence[float], times: Sequence[float]) -> float | None:
    """Least-squares slope of log(time) against log(size); None with fewer than two points."""
    pairs = [(s, t) for s, t in zip(sizes, times, strict=True) if s > 0 and t and t > 0]
    if len({s for s, _ in pairs}) < 2:
        return None
    x = np.log([s for s, _ in pairs])
    y = np.log([t for _, t in pairs])
    return float(np.polyfit(x, y, 1)[0])


def project_time(sizes: Sequence[float], times: Sequence[float], size: float) -> float | None:
    """Projected time at ``size`` from the measured (size, time) points, conservatively.

    Extrapolates from the largest measured point with the growth exponent of the last two points,
    clamped to [1, 3]; with a single point the exponent is 2 (quadratic, the worst of the online
    methods). Small sizes are dominated by per-step overhead, whose exponent is about 1, so the
    clamp from below keeps the projection from trusting a flat start; the quadratic default errs
    towards skipping.
    """
    if not sizes:
        return None
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    last = order[-1]
    exponent = 2.0
    if len(order) >= 2:
        prev = order[-2]
        if sizes[prev] < sizes[last] and times[prev] > 0 and times[last] > 0:
            local = math.log(times[last] / times[prev]) / math.log(sizes[last] / sizes[prev])
            exponent = min(3.0, max(1.0, local))
    return float(times[last] * (size / sizes[last]) ** exponent)


def skipped_status(projected: float, budget: float) -> str:
    return f"skipped (projected {projected:.3g} s > budget {budget:g} s)"


class BudgetGate:
    """Which cells of a sweep run, following the budget and failure rules of the module docstring.

    A sweep visits sizes in increasing order along each series, identified by ``key`` (a method,
    or a (mixer, method) pair). :meth:`check` before a cell says whether to run it; :meth:`record`
    after it feeds the cell's time to later projections, or, when the agreement check failed,
    stops the series and collects the failure in :attr:`failures`.
    """

    def __init__(self, budget: float):
        self.budget = budget
        self.failures: list[str] = []
        self._measured: dict[Any, tuple[list[float], list[float]]] = {}
        self._stopped: dict[Any, str] = {}

    def check(self, key: Any, size: float) -> dict[str, Any] | None:
        """None to run the cell; else the fields of its row (status, repeats 0, projected_s)."""
        if key in self._stopped:
            return {"status": self._stopped[key], "repeats": 0}
        sizes, times = self._measured.get(key, ([], []))
        projected = project_time(sizes, times, size)
        if projected is not None and projected > self.budget:
            return {
                "status": skipped_status(projected, self.budget),
                "repeats": 0,
                "projected_s": projected,
            }
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
    """Time ratio numerator/denominator of each method pair at the largest size both reached.

    A size is the tuple of ``row[k]`` for ``size_keys``; the largest is the one with the largest
    sum (then the largest tuple). Only rows with status ``ok`` count.
    """
    ok = {
        (r["method"], tuple(r[k] for k in size_keys)): r[time_key]
        for r in rows
        if r["status"] == "ok"
    }
    out = []
    for num, den in pairs:
        both = [size for (m, size) in ok if m == num and (den, size) in ok]
        if not both:
            continue
        size = max(both, key=lambda s: (sum(s), s))
        entry: dict[str, Any] = {"numerator": num, "denominator": den}
        entry.update(zip(size_keys, size, strict=True))
        entry["time_key"] = time_key
        entry["ratio"] = ok[(num, size)] / ok[(den, size)]
        out.append(entry)
    return out


# ------------------------------------------------------------------------------ the sweep


@dataclasses.dataclass(frozen=True)
class Cell:
    """One size of a sweep: ``fields`` go into its rows (``{"L": 64}``, ``{"P": 8, "K": 4}``),
    ``size`` drives the budget projection, ``label`` names it in messages (``L=64``)."""

    fields: dict[str, int]
    size: int
    label: str


def run_sweep(
    name: str,
    config: Any,
    *,
    tol: float,
    device: torch.device,
    groups: Sequence[str | None],
    cells: Sequence[Cell],
    warm: Cell,
    open_group: Callable[[str | None], Any],
    open_cell: Callable[[Any, Cell], Any],
    measure: Callable[[str, Any, Cell, int, float], dict[str, Any]],
    compare: Callable[[list[dict[str, Any]], Any], None] | None = None,
    checked: str = "from the float64 reference",
) -> tuple[dict[str, Any], list[dict[str, Any]], BudgetGate]:
    """The loop every benchmark runs: for each group (a mixer, or ``None``) and each cell in
    increasing size, every method of ``config.methods``, with warm-up, budget skips and the
    agreement check, on ``device`` (resolved by the caller, who builds the operands there).
    Returns the machine record, the rows and the gate.

    ``open_group(group)`` builds what the group's cells share (a model); ``open_cell(state,
    cell)`` the operands of one cell (inputs, the float64 reference); ``measure(method, operands,
    cell, repeats, budget)`` runs one method on one cell and returns its row (``status``,
    ``max_rel_err`` and the cell's timings); it runs once on ``warm`` per group first, untimed.
    ``compare(rows, operands)`` may check the cell's rows against each other (greedy tokens).
    """
    dtype = DTYPES[config.dtype]
    rows: list[dict[str, Any]] = []
    gate = BudgetGate(config.budget)
    with torch_threads(config.threads):
        machine = machine_info(device, dtype)
        warning = contention_warning(machine)
        if warning:
            print(warning, file=sys.stderr)
        bar = tqdm(
            total=len(groups) * len(cells) * len(config.methods),
            desc=f"bench {name}",
            unit="run",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        with bar:
            for group in groups:
                where = "" if group is None else f"{group} "
                bar.set_postfix_str(f"{where}setting up")
                state = open_group(group)
                warm_operands = open_cell(state, warm)
                for method in config.methods:
                    measure(method, warm_operands, warm, 1, float("inf"))
                del warm_operands
                for cell in cells:
                    operands = open_cell(state, cell)
                    cell_rows, worst = [], 0.0
                    for method in config.methods:
                        bar.set_postfix_str(f"{where}{cell.label} {method}")
                        head = {} if group is None else {"mixer": group}
                        head.update(method=method, **cell.fields)
                        key = (group, method)
                        blocked = gate.check(key, cell.size)
                        if blocked is not None:
                            rows.append({**head, "tol": tol, **blocked})
                        else:
                            row = {
                                **head,
                                **measure(method, operands, cell, config.repeats, config.budget),
                            }
                            worst = max(worst, row["max_rel_err"])
                            cell_rows.append(row)
                            rows.append(row)
                        bar.update(1)
                    if compare is not None:
                        compare(cell_rows, operands)
                    for row in cell_rows:
                        gate.record(
                            (group, row["method"]),
                            cell.size,
                            row,
                            what=f"{where}{row['method']}",
                            at=cell.label,
                            time_key="total_s",
                        )
                    bar.write(
                        f"{where}{cell.label}: largest relative difference {checked} "
                        f"{worst:.2e} (tol {tol:.0e})"
                    )
                    del operands
                del state
    with contextlib.suppress(AttributeError, OSError):  # not on Windows
        machine["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    return machine, rows, gate


def repeat_runs(
    run_once: Callable[[], tuple[dict[str, Any], Any]],
    check: Callable[[Any], float],
    repeats: int,
    budget: float,
    tol: float,
) -> tuple[list[dict[str, Any]], float]:
    """Run ``run_once()`` (one timed run: its record with ``seconds``, and its outputs) up to
    ``repeats`` times within ``budget``; ``check(outputs)`` gives the first run's error, and a run
    beyond the tolerance ends the repeats. Returns the records and that error."""
    records: list[dict[str, Any]] = []
    err: float | None = None
    while should_repeat([r["seconds"] for r in records], repeats, budget):
        record, outputs = run_once()
        records.append(record)
        if err is None:  # outputs are deterministic: check the first run
            err = check(outputs)
            if not err <= tol:  # also catches NaN
                break
        del outputs
    return records, err


def median_chunks(runs: Sequence[Sequence[tuple[int, int, float]]], offset: int = 0) -> list:
    """Per chunk ``[a, b)`` of the runs: ``(offset + a, offset + b, median mean step time)``."""
    return [
        (offset + a, offset + b, median([r[i][2] for r in runs]) / (b - a))
        for i, (a, b, _) in enumerate(runs[0])
    ]


def prefill_decode_times(records: Sequence[dict[str, Any]], gen_len: int) -> dict[str, Any]:
    """The timing fields of a prefill-then-decode row from its runs' records."""
    prefills = [r["prefill"] for r in records]
    decodes = [r["decode"] for r in records]
    prefill, decode = median(prefills), median(decodes)
    return {
        "prefill_s": prefill,
        "decode_s": decode,
        "total_s": prefill + decode,
        "per_token_s": decode / gen_len,
        "cache_bytes_after_prefill": records[-1]["after_prefill"],
        "peak_cache_bytes": records[-1]["peak"],
        "repeats": len(records),
        "prefill_times_s": prefills,
        "decode_times_s": decodes,
    }


def status_of(err: float, tol: float) -> str:
    return "ok" if err <= tol else failed_status(err, tol)


def per_mixer_ratios(
    rows: Sequence[dict[str, Any]],
    mixers: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    size_keys: Sequence[str],
    time_key: str = "total_s",
    **fields: Any,
) -> list[dict[str, Any]]:
    """:func:`ratios_at_largest` for each mixer's rows, tagged with the mixer and ``fields``."""
    return [
        {"mixer": mixer, **fields, **r}
        for mixer in mixers
        for r in ratios_at_largest(
            [r for r in rows if r["mixer"] == mixer], pairs, size_keys, time_key
        )
    ]


# ------------------------------------------------------------------------------ agreement


def latency(step_times: np.ndarray, first: int = 0) -> dict[str, Any]:
    """The distribution of the times of steps ``first ..``: median, p99, p99.9, max (and
    where), and a trace of the largest and the median step per bucket of positions, for the
    plot. (A model's first token builds its decoding state: ``first=1`` leaves it out.)"""
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


def latency_cell(row: dict[str, Any]) -> str:
    """A table cell: median / p99.9 / max step time (and max over median)."""
    if "step_max_s" not in row:
        return "-"
    spread = row["step_max_s"] / row["step_median_s"]
    times = (row["step_median_s"], row["step_p999_s"], row["step_max_s"])
    return " / ".join(fmt_seconds(t) for t in times) + f" ({spread:.0f}x)"


def default_tol(dtype: torch.dtype) -> float:
    return DEFAULT_TOL[dtype]


def rel_err(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |actual - reference| relative to the largest |reference| (computed in float64)."""
    reference = reference.to(torch.float64)
    diff = (actual.to(torch.float64) - reference).abs().max().item()
    scale = reference.abs().max().item()
    return float(diff / max(scale, 1e-300))


def failed_status(err: float, tol: float) -> str:
    return f"FAILED (max rel err {err:.2e} > tol {tol:.1e})"


def report_failures(name: str, failures: Sequence[str]) -> int:
    """Print failed agreement checks loudly to stderr; the exit code (1 if any, else 0)."""
    if not failures:
        return 0
    bar = "!" * 78
    lines = [bar, f"{name}: AGREEMENT CHECK FAILED, these outputs differ from the reference:"]
    lines += [f"  {f}" for f in failures]
    lines.append(bar)
    print("\n".join(lines), file=sys.stderr)
    return 1


def finish_report(
    name: str,
    config: Any,
    machine: dict[str, Any],
    device: torch.device,
    rows: list[dict[str, Any]],
    gate: BudgetGate,
    tol: float,
    row_fields: Sequence[str],
    **results: Any,
) -> dict[str, Any]:
    """The report of a sweep: rows tagged with the benchmark and its setting, then the results.

    Every row gets ``benchmark=name``, the ``config`` fields named in ``row_fields``, the dtype,
    device and thread count; the report holds the machine, the config, the rows, ``results``
    (slopes, ratios, ...), the failed agreement checks and the largest relative error.
    """
    setting = {field: getattr(config, field) for field in row_fields}
    for row in rows:
        row.update(
            benchmark=name,
            **setting,
            dtype=config.dtype,
            device=str(device),
            threads=machine["torch_threads"],
        )
    return {
        "benchmark": name,
        "machine": machine,
        "config": dataclasses.asdict(config),
        "rows": rows,
        **results,
        "failures": gate.failures,
        "max_rel_err": max((r.get("max_rel_err") or 0.0 for r in rows), default=0.0),
        "tol": tol,
    }


# ------------------------------------------------------------------------------ output files


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.dtype | torch.device | Path):
        return str(value)
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return path


def csv_columns(keys: str, values: str, extra: str = "", setting: str = "") -> tuple[str, ...]:
    """The columns of ``<name>.csv``: the cell's keys, its status and values, the agreement, the
    repeats, ``extra``, then the run's setting (each argument a space-separated list)."""
    head = ("benchmark", *keys.split(), "status", *values.split(), "max_rel_err", "tol")
    return (*head, "repeats", *extra.split(), *setting.split(), "dtype", "device", "threads")


def write_report(
    out: Path,
    name: str,
    report: dict[str, Any],
    columns: Sequence[str],
    table_text: str,
    plot: Callable[[dict[str, Any], Path], list[Path]] | None,
    per_position_keys: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``<name>.json``, ``<name>.csv``, ``<name>_table.md``, with ``per_position_keys``
    ``<name>_per_position.csv`` (mean step time per chunk of every ok row), and the PNGs of
    ``plot(report, out)`` unless ``plot`` is None; return the paths written."""
    out = Path(out)
    rows = report["rows"]
    written = [
        write_json(out / f"{name}.json", report),
        write_csv(out / f"{name}.csv", rows, columns),
    ]
    if per_position_keys is not None:
        chunk_rows = [
            {**{k: r[k] for k in per_position_keys}, "start": a, "stop": b, "mean_step_s": s}
            for r in rows
            if r["status"] == "ok"
            for a, b, s in r["chunks"]
        ]
        chunk_columns = (*per_position_keys, "start", "stop", "mean_step_s")
        written.append(write_csv(out / f"{name}_per_position.csv", chunk_rows, chunk_columns))
    table_path = out / f"{name}_table.md"
    table_path.write_text(table_text)
    written.append(table_path)
    if plot is not None:
        written += plot(report, out)
    return written


def notes(
    report: dict[str, Any],
    size_keys: Sequence[str],
    *,
    what: str = "time",
    checked: str = "from the float64 reference",
) -> list[str]:
    """The bullet lines under a table: each ratio at the largest size both methods reached,
    each budget skip, and the agreement check."""

    def at(r: dict[str, Any]) -> str:
        return ", ".join(f"{k}={r[k]}" for k in size_keys)

    def who(r: dict[str, Any]) -> str:
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


Column = tuple[str, str, Callable[[dict[str, Any]], str]]  # header, method, format of an ok row


def method_grid(
    rows: Sequence[dict[str, Any]],
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
            line.append(fmt_ratio(ra[ratio_key], rb[ratio_key]) if both else "-")
        body.append(line)
    return header, body


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table, padded so it reads on a terminal and renders in Markdown."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def fmt_ratio(num: float | None, den: float | None) -> str:
    if not num or not den:
        return "-"
    return f"{num / den:.2f}x"
