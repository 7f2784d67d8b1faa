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
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

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
LATENCY_BUCKETS = 256  # positions are cut into this many buckets for the latency trace


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


def time_steps(
    stepper: Stepper, inputs: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, list[tuple[int, int, float]], int, np.ndarray]:
    """Feed ``inputs`` (L, B, D) one step at a time; outputs (B, D, L), chunk times, peak bytes
    and the time of every step (L,).

    One timer runs per dyadic chunk (:func:`common.chunk_bounds`), another around every step
    (host time: on CUDA a step's kernels may still run after it returns); ``nbytes`` is sampled
    between chunks, outside the timed region.
    """
    step = stepper.step
    outputs: list[torch.Tensor] = []
    append = outputs.append
    chunks = []
    step_times = np.empty(inputs.shape[0])
    peak = stepper.nbytes
    sync, clock = common.sync, time.perf_counter
    sync(device)
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


def latency(step_times: np.ndarray) -> dict[str, Any]:
    """The distribution of step times: median, p99, p99.9, max (and where), and a trace of the
    largest and the median step per bucket of positions, for the plot."""
    buckets = np.array_split(step_times, min(LATENCY_BUCKETS, len(step_times)))
    starts = np.cumsum([0] + [len(b) for b in buckets[:-1]])
    return {
        "step_median_s": float(np.median(step_times)),
        "step_p99_s": float(np.percentile(step_times, 99)),
        "step_p999_s": float(np.percentile(step_times, 99.9)),
        "step_max_s": float(step_times.max()),
        "step_max_at": int(step_times.argmax()),
        "trace": [
            (int(a), float(b.max()), float(np.median(b)))
            for a, b in zip(starts, buckets, strict=True)
        ],
    }


def run_cell(
    method: str,
    h: torch.Tensor,
    u: torch.Tensor,
    reference: torch.Tensor,
    *,
    repeats: int,
    budget: float,
    tol: float,
    device: torch.device,
) -> dict[str, Any]:
    """Run one method at one length (L = u.shape[-1]) up to ``repeats`` times; one result row."""
    batch, _, length = u.shape
    times: list[float] = []
    setups: list[float] = []
    runs: list[list[tuple[int, int, float]]] = []
    peak, err, steps = None, None, {}
    inputs = u.permute(2, 0, 1).contiguous()  # (L, B, D): inputs[t] is one contiguous step
    while common.should_repeat(times, repeats, budget):
        common.sync(device)
        if method == "offline":
            began = time.perf_counter()
            y = causal_conv(u, h)
            common.sync(device)
            times.append(time.perf_counter() - began)
            setups.append(0.0)
            runs.append([(0, length, times[-1])])
        else:
            began = time.perf_counter()
            stepper = STEPPERS[method](h, length, batch)
            common.sync(device)
            setups.append(time.perf_counter() - began)
            y, chunks, peak, step_times = time_steps(stepper, inputs, device)
            del stepper
            times.append(sum(c for _, _, c in chunks))
            runs.append(chunks)
            if times[-1] == min(times):  # the latency of the fastest run
                steps = latency(step_times)
        if err is None:  # outputs are deterministic: check the first run
            err = common.rel_err(y, reference)
            if not err <= tol:  # also catches NaN
                break
        del y
    total = common.median(times)
    # Per chunk: the median over repeats of the mean step time in that chunk.
    chunk_rows = [
        (start, stop, common.median([r[i][2] for r in runs]) / (stop - start))
        for i, (start, stop, _) in enumerate(runs[0])
    ]
    ok = err <= tol
    return {
        "method": method,
        "L": length,
        "status": "ok" if ok else common.failed_status(err, tol),
        "total_s": total,
        "per_token_s": total / length,
        "setup_s": common.median(setups),
        "peak_cache_bytes": peak,
        "max_rel_err": err,
        "tol": tol,
        "repeats": len(times),
        "times_s": times,
        "chunks": chunk_rows,
        **steps,
    }


def _not_run(method: str, length: int, status: str, tol: float) -> dict[str, Any]:
    return {"method": method, "L": length, "status": status, "tol": tol, "repeats": 0}


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
    device = common.resolve_device(config.device)
    dtype = common.DTYPES[config.dtype]
    tol = common.default_tol(dtype) if config.tol is None else config.tol
    max_len = max(lengths[-1], config.warmup_len)

    with common.torch_threads(config.threads):
        machine = common.machine_info(device, dtype)
        warning = common.contention_warning(machine)
        if warning:
            print(warning, file=sys.stderr)
        h_full = decaying_filter(config.channels, max_len, config.seed)
        u_full = random_inputs(config.batch, config.channels, max_len, config.seed)

        def operands(length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            h = h_full[:, :length].to(device=device, dtype=dtype).contiguous()
            u = u_full[..., :length].to(device=device, dtype=dtype).contiguous()
            reference = causal_conv(u.to(torch.float64), h.to(torch.float64))
            return h, u, reference

        # Warm-up: every method once at a small size (allocator, FFT plans, lazy imports).
        warm = operands(min(config.warmup_len, lengths[0]))
        for method in config.methods:
            run_cell(method, *warm, repeats=1, budget=float("inf"), tol=tol, device=device)

        rows: list[dict[str, Any]] = []
        gate = common.BudgetGate(config.budget)
        bar = tqdm(
            total=len(lengths) * len(config.methods),
            desc="bench layer",
            unit="run",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        with bar:
            for length in lengths:
                h, u, reference = operands(length)
                worst = 0.0
                for method in config.methods:
                    bar.set_postfix_str(f"L={length} {method}")
                    blocked = gate.check(method, length)
                    if blocked is not None:
                        row = {**_not_run(method, length, blocked["status"], tol), **blocked}
                    else:
                        row = run_cell(
                            method,
                            h,
                            u,
                            reference,
                            repeats=config.repeats,
                            budget=config.budget,
                            tol=tol,
                            device=device,
                        )
                        worst = max(worst, row["max_rel_err"])
                        gate.record(
                            method, length, row, what=method, at=f"L={length}", time_key="total_s"
                        )
                    rows.append(row)
                    bar.update(1)
                bar.write(
                    f"L={length}: largest relative difference from the float64 reference "
                    f"{worst:.2e} (tol {tol:.0e})"
                )
            del h, u, reference

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


def _cell(row: dict[str, Any]) -> str:
    if row["status"] == "ok":
        return common.fmt_seconds(row["total_s"])
    if row["status"].startswith("skipped"):
        return "skipped"
    if row["status"].startswith("FAILED"):
        return "FAILED"
    return "-"


def _latency_cell(row: dict[str, Any]) -> str:
    if row["status"] != "ok" or "step_max_s" not in row:
        return _cell(row)
    spread = row["step_max_s"] / row["step_median_s"]
    times = (row["step_median_s"], row["step_p999_s"], row["step_max_s"])
    return " / ".join(common.fmt_seconds(t) for t in times) + f" ({spread:.0f}x)"


def table(report: dict[str, Any]) -> str:
    """The terminal/Markdown summary: total time per L and method, ratios, cache, slopes."""
    rows = report["rows"]
    methods = list(report["config"]["methods"])
    by = {(r["method"], r["L"]): r for r in rows}
    lengths = sorted({r["L"] for r in rows})
    pairs = [p for p in RATIOS[:2] if p[0] in methods and p[1] in methods]
    header = ["L", *methods, *(f"{a}/{b}" for a, b in pairs)]
    body = []
    for length in lengths:
        cells = [str(length), *(_cell(by[(m, length)]) for m in methods)]
        for a, b in pairs:
            ra, rb = by[(a, length)], by[(b, length)]
            ok = ra["status"] == "ok" and rb["status"] == "ok"
            cells.append(common.fmt_ratio(ra["total_s"], rb["total_s"]) if ok else "-")
        body.append(cells)
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

    cache_methods = [m for m in methods if m != "offline"]
    cache_header = ["L", *(f"{m} cache" for m in cache_methods)]
    cache_body = [
        [
            str(length),
            *(common.fmt_bytes(by[(m, length)].get("peak_cache_bytes")) for m in cache_methods),
        ]
        for length in lengths
    ]
    online = [m for m in methods if m in ONLINE_METHODS]
    latency_header = ["L", *(f"{m} median / p99.9 / max" for m in online)]
    latency_body = [
        [str(length), *(_latency_cell(by[(m, length)]) for m in online)] for length in lengths
    ]
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
        common.markdown_table(cache_header, cache_body) if cache_methods else "",
        "",
        "Time of one step (the fastest run's), and the largest over its median:",
        "",
        common.markdown_table(latency_header, latency_body) if online else "",
        "",
    ]
    lines += _notes(report)
    return "\n".join(lines).rstrip() + "\n"


def _notes(report: dict[str, Any]) -> list[str]:
    lines = []
    for r in report["ratios"]:
        lines.append(
            f"- {r['numerator']}/{r['denominator']} at the largest L both reached "
            f"(L={r['L']}): {r['ratio']:.2f}x"
        )
    skipped = [r for r in report["rows"] if r["status"].startswith("skipped")]
    for r in skipped:
        lines.append(f"- {r['method']} at L={r['L']}: {r['status']}")
    lines.append(
        f"- agreement: largest relative difference from the float64 reference "
        f"{report['max_rel_err']:.2e} (tol {report['tol']:.0e})"
        + ("" if not report["failures"] else f"; FAILED: {'; '.join(report['failures'])}")
    )
    return lines


CSV_COLUMNS = (
    "benchmark",
    "method",
    "L",
    "status",
    "total_s",
    "per_token_s",
    "setup_s",
    "peak_cache_bytes",
    "max_rel_err",
    "tol",
    "repeats",
    "step_median_s",
    "step_p99_s",
    "step_p999_s",
    "step_max_s",
    "step_max_at",
    "channels",
    "batch",
    "dtype",
    "device",
    "threads",
)


def write_outputs(report: dict[str, Any], out: Path, make_plots: bool = True) -> list[Path]:
    """layer.json, layer.csv, layer_per_position.csv, layer_table.md and the PNGs, in ``out``."""
    plotter = plot if make_plots else None
    return common.write_report(
        out, "layer", report, CSV_COLUMNS, table(report), plotter, ("method", "L")
    )


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    rows = report["rows"]
    methods = report["config"]["methods"]
    subtitle = common.machine_line(report["machine"])
    cfg = report["config"]
    what = f"D={cfg['channels']}, B={cfg['batch']}"

    def ok(method: str) -> list[dict[str, Any]]:
        return sorted(
            (r for r in rows if r["method"] == method and r["status"] == "ok"),
            key=lambda r: r["L"],
        )

    total, per_pos, cache, trace = [], [], [], []
    for m in methods:
        done = ok(m)
        slope = report["slopes"][m]["all"]
        label = m if slope is None else f"{m} (slope {slope:.2f})"
        total.append(
            {
                "method": m,
                "label": label,
                "x": [r["L"] for r in done],
                "y": [r["total_s"] for r in done],
            }
        )
        if done:
            last = done[-1]
            mids = [(a + b) / 2 for a, b, _ in last["chunks"]]
            per_pos.append(
                {
                    "method": m,
                    "label": f"{m} (L={last['L']})",
                    "x": mids if m != "offline" else [1, last["L"]],
                    "y": [s for _, _, s in last["chunks"]]
                    if m != "offline"
                    else [last["per_token_s"]] * 2,
                    "linestyle": "--" if m == "offline" else "-",
                }
            )
        if done and "trace" in done[-1]:
            last = done[-1]
            positions = [a for a, _, _ in last["trace"]]
            trace.append(
                {
                    "method": m,
                    "label": f"{m}: largest step per bucket (L={last['L']})",
                    "x": positions,
                    "y": [top for _, top, _ in last["trace"]],
                }
            )
            trace.append(
                {
                    "method": m,
                    "label": f"{m}: median step per bucket",
                    "x": positions,
                    "y": [mid for _, _, mid in last["trace"]],
                    "linestyle": ":",
                }
            )
        if m != "offline":
            cache.append(
                {
                    "method": m,
                    "label": m,
                    "x": [r["L"] for r in done],
                    "y": [r["peak_cache_bytes"] for r in done],
                }
            )
    return [
        plots.loglog_lines(
            total,
            xlabel="generated length L",
            ylabel="total time (s)",
            title=f"Online convolution: total time for L steps ({what})",
            subtitle=subtitle,
            path=out / "layer_total_time.png",
        ),
        plots.loglog_lines(
            per_pos,
            xlabel="position t (mean over dyadic chunks)",
            ylabel="time per token (s)",
            title=f"Time per token against position, at the largest L run ({what})",
            subtitle=subtitle,
            path=out / "layer_time_per_token.png",
        ),
        plots.loglog_lines(
            cache,
            xlabel="generated length L",
            ylabel="peak bytes held",
            title=f"Cache (engine buffers) against L ({what})",
            subtitle=subtitle,
            path=out / "layer_cache_bytes.png",
        ),
        *(
            [
                plots.loglog_lines(
                    trace,
                    xlabel=f"position t (buckets of L/{LATENCY_BUCKETS} steps)",
                    ylabel="time of one step (s)",
                    title=f"Step latency against position, at the largest L run ({what})",
                    subtitle=subtitle,
                    path=out / "layer_step_latency.png",
                    logx=False,
                )
            ]
            if trace
            else []
        ),
    ]
