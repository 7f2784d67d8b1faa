"""``futurefill bench layer``: one online convolution, total time against generated length L.

For every L of the sweep and every method, L random inputs (B, D) are fed one step at a time and
the outputs kept; then they are checked against the float64 offline convolution. Methods:

==========  =====================================================================  ==============
method      what runs per step                                                     total time
==========  =====================================================================  ==============
naive       the naive engine: dot product with the t + 1 inputs so far             O(L^2)
epoched     Epoched-FutureFill engine                                              O(L^1.5 ...)
continuous  Continuous-FutureFill engine                                           O(L log^2 L)
recompute   a full FFT convolution of the prefix; keeps its last output (no cache)  O(L^2 log L)
offline     one FFT convolution of the whole sequence (not online: the floor)      O(L log L)
==========  =====================================================================  ==============

Steppers come from :data:`STEPPERS` (name -> factory ``(h, max_len, batch_size) -> stepper`` with
``step(u_t)`` and ``nbytes``); a test may put a wrong one there to see the agreement check fail.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from futurefill.bench import common, plots
from futurefill.fftconv import causal_conv
from futurefill.online import make_engine

LAYER_METHODS = ("naive", "epoched", "continuous", "deamortized", "recompute", "offline")
ONLINE_METHODS = ("naive", "epoched", "continuous", "deamortized")
# (numerator, denominator) pairs whose time ratio is reported at the largest L both reached.
RATIOS = (
    ("naive", "epoched"),
    ("naive", "continuous"),
    ("recompute", "continuous"),
    ("continuous", "offline"),
    ("deamortized", "continuous"),
)


class Stepper(Protocol):
    """What the benchmark drives: one output per input, and the bytes it holds."""

    def step(self, u_t: torch.Tensor) -> torch.Tensor: ...

    @property
    def nbytes(self) -> int: ...


class RecomputeConv:
    """No cache: at step t, the FFT convolution of all t + 1 inputs so far; keep the last output.

    What a convolutional model without a generation cache does. O(t log t) per step, O(L^2 log L)
    for L steps; holds only the inputs (B, D, L).
    """

    def __init__(self, h: torch.Tensor, max_len: int, batch_size: int):
        self.h = h[:, :max_len]
        self._u = torch.zeros(batch_size, h.shape[0], max_len, dtype=h.dtype, device=h.device)
        # Outputs go to one preallocated buffer: thousands of small long-lived tensors between
        # ever larger FFT temporaries fragment the heap (3 GB resident at L = 2048).
        self._y = torch.zeros(max_len, batch_size, h.shape[0], dtype=h.dtype, device=h.device)
        self._t = 0

    @property
    def nbytes(self) -> int:
        return self._u.numel() * self._u.element_size()

    def step(self, u_t: torch.Tensor) -> torch.Tensor:
        t = self._t
        self._u[:, :, t] = u_t
        self._t = t + 1
        y = self._y[t]
        y.copy_(causal_conv(self._u[:, :, : t + 1], self.h[:, : t + 1])[:, :, t])
        return y


def _engine_factory(method: str) -> Callable[[torch.Tensor, int, int], Stepper]:
    def factory(h: torch.Tensor, max_len: int, batch_size: int) -> Stepper:
        return make_engine(h, method, max_len=max_len, batch_size=batch_size)

    factory.__name__ = f"make_{method}"
    return factory


STEPPERS: dict[str, Callable[[torch.Tensor, int, int], Stepper]] = {
    **{m: _engine_factory(m) for m in ONLINE_METHODS},
    "recompute": RecomputeConv,
}


@dataclasses.dataclass
class LayerConfig:
    """Options of the layer benchmark (the CLI flags have the same names)."""

    lengths: tuple[int, ...] = tuple(2**k for k in range(8, 15))
    methods: tuple[str, ...] = LAYER_METHODS
    channels: int = 128
    batch: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None  # None: every available core
    repeats: int = 3  # median of this many runs (fewer when the budget would be exceeded)
    budget: float = 30.0  # seconds one run of one method at one L may take (projected)
    warmup_len: int = 256  # every method runs once at this length before the sweep
    slope_from: int | None = None  # also fit the slope over L >= slope_from
    tol: float | None = None  # agreement tolerance; None: by dtype (common.DEFAULT_TOL)
    seed: int = 0
    out: Path = Path("results")
    progress: bool = True
    plots: bool = True


CONFIG = LayerConfig


def decaying_filter(channels: int, length: int, seed: int) -> torch.Tensor:
    """Random float64 filters with a slow decay, as long-convolution models learn them."""
    gen = torch.Generator().manual_seed(seed)
    decay = 1.0 / (1.0 + 0.05 * torch.arange(length, dtype=torch.float64))
    return torch.randn(channels, length, generator=gen, dtype=torch.float64) * decay


def random_inputs(batch: int, channels: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(batch, channels, length, generator=gen, dtype=torch.float64)


def conv_operands(config: Any, device: torch.device, dtype: torch.dtype, max_len: int) -> dict:
    """``open_group`` and ``open_cell`` of a sweep over one convolution: seeded float64 filters
    and inputs of ``max_len`` positions; a cell gets their first ``cell.size`` in the working
    dtype, with the float64 offline convolution as its reference."""

    def open_group(_: None) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            decaying_filter(config.channels, max_len, config.seed),
            random_inputs(config.batch, config.channels, max_len, config.seed),
        )

    def open_cell(full: tuple[torch.Tensor, torch.Tensor], cell: common.Cell) -> tuple:
        h_full, u_full = full
        h = h_full[:, : cell.size].to(device=device, dtype=dtype).contiguous()
        u = u_full[..., : cell.size].to(device=device, dtype=dtype).contiguous()
        return h, u, causal_conv(u.to(torch.float64), h.to(torch.float64))

    return {"open_group": open_group, "open_cell": open_cell}


def time_steps(
    stepper: Stepper, inputs: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, list[tuple[int, int, float]], int, np.ndarray]:
    """Feed ``inputs`` (L, B, D) one step at a time; outputs (B, D, L), chunk times, peak bytes
    and the time of every step (L,).

    One timer runs per dyadic chunk (:func:`common.chunk_bounds`), another around every step
    (host time: on CUDA a step's kernels may still run after it returns); ``nbytes`` is sampled
    between chunks, outside the timed region; the garbage collector is paused
    (:func:`common.paused_gc`).
    """
    step = stepper.step
    outputs: list[torch.Tensor] = []
    append = outputs.append
    chunks = []
    step_times = np.empty(inputs.shape[0])
    peak = stepper.nbytes
    sync, clock = common.sync, time.perf_counter
    sync(device)
    with common.paused_gc():
        for start, stop in common.chunk_bounds(inputs.shape[0]):
            began = clock()
            for t in range(start, stop):
                before = clock()
                append(step(inputs[t]))
                step_times[t] = clock() - before
            sync(device)
            chunks.append((start, stop, clock() - began))
            peak = max(peak, stepper.nbytes)
    return torch.stack(outputs, dim=-1), chunks, peak, step_times


def run_cell(
    method: str,
    operands: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    repeats: int,
    budget: float,
    tol: float,
    device: torch.device,
) -> dict[str, Any]:
    """Run one method on ``operands`` = (h, u, float64 reference) at L = u.shape[-1], up to
    ``repeats`` times; one result row."""
    h, u, reference = operands
    batch, _, length = u.shape
    inputs = u.permute(2, 0, 1).contiguous()  # (L, B, D): inputs[t] is one contiguous step

    def run_once() -> tuple[dict[str, Any], torch.Tensor]:
        common.sync(device)
        began = time.perf_counter()
        if method == "offline":
            y = causal_conv(u, h)
            common.sync(device)
            seconds = time.perf_counter() - began
            return {"seconds": seconds, "setup": 0.0, "chunks": [(0, length, seconds)]}, y
        stepper = STEPPERS[method](h, length, batch)
        common.sync(device)
        setup = time.perf_counter() - began
        y, chunks, peak, step_times = time_steps(stepper, inputs, device)
        seconds = sum(c for _, _, c in chunks)
        record = {"seconds": seconds, "setup": setup, "chunks": chunks, "peak": peak}
        return {**record, "steps": step_times}, y

    records, err = common.repeat_runs(
        run_once, lambda y: common.rel_err(y, reference), repeats, budget, tol
    )
    times = [r["seconds"] for r in records]
    fastest = min(records, key=lambda r: r["seconds"])
    total = common.median(times)
    return {
        "method": method,
        "L": length,
        "status": common.status_of(err, tol),
        "total_s": total,
        "per_token_s": total / length,
        "setup_s": common.median([r["setup"] for r in records]),
        "peak_cache_bytes": records[-1].get("peak"),
        "max_rel_err": err,
        "tol": tol,
        "repeats": len(records),
        "times_s": times,
        "chunks": common.median_chunks([r["chunks"] for r in records]),
        **(common.latency(fastest["steps"]) if "steps" in fastest else {}),
    }


def peak_bytes(config: LayerConfig) -> int:
    """An upper estimate of the memory of the largest run: the naive engine's three
    (batch, channels, L) buffers, and the float64 reference's FFT convolution (~8 of them)."""
    size = common.DTYPES[config.dtype].itemsize
    return config.batch * config.channels * max(config.lengths) * (3 * size + 8 * 8)


def run(config: LayerConfig) -> dict[str, Any]:
    """Run the sweep; the report (machine, config, rows, slopes, ratios, failures)."""
    unknown = [m for m in config.methods if m not in LAYER_METHODS and m not in STEPPERS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {LAYER_METHODS}")
    lengths = sorted(set(config.lengths))
    if not lengths or lengths[0] < 1:
        raise ValueError(f"lengths must be positive, got {config.lengths}")
    dtype = common.DTYPES[config.dtype]
    device = common.resolve_device(config.device)
    tol = common.default_tol(dtype) if config.tol is None else config.tol
    max_len = max(lengths[-1], config.warmup_len)
    warm_len = min(config.warmup_len, lengths[0])

    def measure(method, operands, cell, repeats, budget):
        return run_cell(method, operands, repeats=repeats, budget=budget, tol=tol, device=device)

    machine, rows, gate = common.run_sweep(
        "layer",
        config,
        tol=tol,
        device=device,
        groups=[None],
        cells=[common.Cell({"L": n}, n, f"L={n}") for n in lengths],
        warm=common.Cell({"L": warm_len}, warm_len, "warm-up"),
        measure=measure,
        **conv_operands(config, device, dtype, max_len),
    )
    return common.finish_report(
        "layer",
        config,
        machine,
        device,
        rows,
        gate,
        tol,
        ("channels", "batch"),
        slopes=slopes(rows, config.methods, config.slope_from),
        ratios=common.ratios_at_largest(rows, RATIOS, ("L",)),
    )


def slopes(
    rows: list[dict[str, Any]], methods: tuple[str, ...], slope_from: int | None
) -> dict[str, dict[str, Any]]:
    """Fitted log-log slope of total time against L per method, over all L and L >= slope_from."""
    out = {}
    for method in methods:
        ok = [(r["L"], r["total_s"]) for r in rows if r["method"] == method and r["status"] == "ok"]
        entry: dict[str, Any] = {
            "all": common.fit_slope([x for x, _ in ok], [t for _, t in ok]),
            "points": len(ok),
            "L_min": min((x for x, _ in ok), default=None),
            "L_max": max((x for x, _ in ok), default=None),
        }
        if slope_from is not None:
            tail = [(x, t) for x, t in ok if x >= slope_from]
            entry["from"] = slope_from
            entry["tail"] = common.fit_slope([x for x, _ in tail], [t for _, t in tail])
        out[method] = entry
    return out


# ------------------------------------------------------------------------------ output


def table(report: dict[str, Any]) -> str:
    """The terminal/Markdown summary: total time per L and method, ratios, cache, slopes."""
    rows = report["rows"]
    methods = list(report["config"]["methods"])
    pairs = [p for p in RATIOS[:2] if p[0] in methods and p[1] in methods]
    total = [(m, m, lambda r: common.fmt_seconds(r["total_s"])) for m in methods]
    header, body = common.method_grid(rows, ("L",), total, pairs)
    slope_row = ["slope"]
    for m in methods:
        s = report["slopes"][m]
        slope_row.append("-" if s["all"] is None else f"{s['all']:.2f}")
    body.append(slope_row + [""] * len(pairs))
    if any("tail" in s for s in report["slopes"].values()):
        tail_row = [f"slope L>={report['config']['slope_from']}"]
        for m in methods:
            s = report["slopes"][m].get("tail")
            tail_row.append("-" if s is None else f"{s:.2f}")
        body.append(tail_row + [""] * len(pairs))
    cached = [m for m in methods if m != "offline"]
    cache = [(f"{m} cache", m, lambda r: common.fmt_bytes(r["peak_cache_bytes"])) for m in cached]
    online = [m for m in methods if m in ONLINE_METHODS]
    steps = [(f"{m} median / p99.9 / max", m, common.latency_cell) for m in online]
    cfg = report["config"]
    lines = [
        f"## Layer benchmark: total time for L steps (median of up to {cfg['repeats']} runs)",
        "",
        f"Machine: {common.machine_line(report['machine'])}",
        f"Layer: {cfg['channels']} channels, batch {cfg['batch']}, {cfg['dtype']}, "
        f"budget {cfg['budget']:g} s per run. Slope: least squares of log time on log L.",
        "",
        common.markdown_table(header, body),
        "",
        common.markdown_table(*common.method_grid(rows, ("L",), cache)) if cached else "",
        "",
        "Time of one step (the fastest run's), and the largest over its median:",
        "",
        common.markdown_table(*common.method_grid(rows, ("L",), steps)) if online else "",
        "",
    ]
    lines += common.notes(report, ("L",))
    return "\n".join(lines).rstrip() + "\n"


CSV_COLUMNS = common.csv_columns(
    "method L",
    "total_s per_token_s setup_s peak_cache_bytes",
    "step_median_s step_p99_s step_p999_s step_max_s step_max_at",
    "channels batch",
)


PER_POSITION_KEYS = ("method", "L")  # columns of layer_per_position.csv


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    rows, cfg = report["rows"], report["config"]
    methods = cfg["methods"]
    total = plots.method_lines(rows, methods, "L", "total_s")
    for line in total:
        slope = report["slopes"][line["method"]]["all"]
        line["label"] += "" if slope is None else f" (slope {slope:.2f})"
    per_position = plots.chunk_lines(rows, [m for m in methods if m != "offline"], "L")
    done = [r for r in rows if r["method"] == "offline" and r["status"] == "ok"]
    if done:  # not stepped: its time per token as a flat reference line
        last = max(done, key=lambda r: r["L"])
        per_position.append(
            {
                "method": "offline",
                "label": f"offline (L={last['L']})",
                "x": [1, last["L"]],
                "y": [last["per_token_s"]] * 2,
                "linestyle": "--",
            }
        )
    trace = plots.latency_lines(rows, methods, "L")
    cached = [m for m in methods if m != "offline"]
    specs = [
        (
            "layer_total_time",
            total,
            "generated length L",
            "total time (s)",
            "Online convolution: total time for L steps",
        ),
        (
            "layer_time_per_token",
            per_position,
            "position t (mean over dyadic chunks)",
            "time per token (s)",
            "Time per token against position, at the largest L run",
        ),
        (
            "layer_cache_bytes",
            plots.method_lines(rows, cached, "L", "peak_cache_bytes"),
            "generated length L",
            "peak bytes held",
            "Cache (engine buffers) against L",
        ),
    ]
    if trace:
        specs.append(
            (
                "layer_step_latency",
                trace,
                f"position t (buckets of L/{common.LATENCY_BUCKETS} steps)",
                "time of one step (s)",
                "Step latency against position, at the largest L run",
                {"logx": False},
            )
        )
    return plots.figures(report, out, f"D={cfg['channels']}, B={cfg['batch']}", specs)
