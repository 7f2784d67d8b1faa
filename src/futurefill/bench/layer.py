"""``futurefill bench layer``: one online convolution, total time against generated length L.

For every L of the sweep and every method, L random inputs (B, D) are fed one step at a time and
the outputs kept; then they are checked against the float64 offline convolution. Methods:

===========  ====================================================================  =============
method       what runs per step                                                    total time
===========  ====================================================================  =============
naive        the naive engine: dot product with the t + 1 inputs so far            O(L^2)
epoched      Epoched-FutureFill engine                                             O(L^1.5 ...)
continuous   Continuous-FutureFill engine                                          O(L log^2 L)
deamortized  Continuous-FutureFill with every FFT spread over the steps before it  O(L log^2 L)
recompute    a full FFT convolution of the prefix; keeps its last output (no cache) O(L^2 log L)
offline      one FFT convolution of the whole sequence (not online: the floor)     O(L log L)
===========  ====================================================================  =============

Steppers come from :data:`STEPPERS` (name -> factory ``(h, max_len, batch_size) -> stepper`` with
``step(u_t)``, ``prefill(u)`` and ``nbytes``); a test may put a wrong one there to see the
agreement check fail. :func:`measure` also serves ``bench prompt``: a cell with a prompt length
``P`` prefills the first P inputs at once and steps through the rest.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from futurefill.bench import common, plots
from futurefill.bench.common import LENGTH, SIZE, option
from futurefill.fftconv import causal_conv
from futurefill.online import make_engine

ONLINE_METHODS = ("naive", "epoched", "continuous", "deamortized")
LAYER_METHODS = (*ONLINE_METHODS, "recompute", "offline")
# (numerator, denominator) pairs whose time ratio is reported at the largest L both reached.
RATIOS = (
    ("naive", "epoched"),
    ("naive", "continuous"),
    ("recompute", "continuous"),
    ("continuous", "offline"),
    ("deamortized", "continuous"),
)


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
        return self._y[t].copy_(causal_conv(self._u[:, :, : t + 1], self.h[:, : t + 1])[:, :, t])


def _engine_factory(method: str):
    return lambda h, max_len, batch_size: make_engine(
        h, method, max_len=max_len, batch_size=batch_size
    )


STEPPERS = {**{m: _engine_factory(m) for m in ONLINE_METHODS}, "recompute": RecomputeConv}


@dataclasses.dataclass
class LayerConfig(common.Options):
    """Options of the layer benchmark (the CLI flags have the same names)."""

    lengths: tuple[int, ...] = option(
        tuple(2**k for k in range(8, 15)), "generated lengths L to sweep", type=LENGTH, nargs="+"
    )
    methods: tuple[str, ...] = option(LAYER_METHODS, "methods", choices=LAYER_METHODS, nargs="+")
    channels: int = option(128, "channels D", type=SIZE)
    batch: int = option(1, "batch size B", type=SIZE)
    warmup_len: int = option(256, "length of every method's warm-up run", type=LENGTH)
    slope_from: int | None = option(None, "also fit the slope over L >= this", type=LENGTH)

    @property
    def longest(self) -> int:
        return max(self.lengths)


CONFIG = LayerConfig


def open_conv(config: Any, longest: int):
    """``open_group`` and ``open_cell`` of a sweep over one convolution: seeded float64 filters
    with a slow decay (as long-convolution models learn them) and inputs of ``longest``
    positions; a cell of size n gets their first n in the working dtype, with the float64
    offline convolution as its reference."""

    def open_group(_: None, device: torch.device, dtype: torch.dtype) -> tuple:
        gen = torch.Generator().manual_seed(config.seed)
        decay = 1.0 / (1.0 + 0.05 * torch.arange(longest, dtype=torch.float64))
        h = torch.randn(config.channels, longest, generator=gen, dtype=torch.float64) * decay
        gen.manual_seed(config.seed + 1)
        u = torch.randn(config.batch, config.channels, longest, generator=gen, dtype=torch.float64)
        return h, u, device, dtype

    def open_cell(full: tuple, cell: common.Cell) -> tuple:
        h, u, device, dtype = full
        h = h[:, : cell.size].to(device=device, dtype=dtype).contiguous()
        u = u[..., : cell.size].to(device=device, dtype=dtype).contiguous()
        return h, u, causal_conv(u.to(torch.float64), h.to(torch.float64))

    return open_group, open_cell


def measure(method: str, operands: tuple, cell: common.Cell, setting: common.Setting) -> dict:
    """Run ``method`` on ``operands`` = (h, u, float64 reference): prefill the cell's first ``P``
    inputs (when it has a P), step through the rest; its measured row fields."""
    h, u, reference = operands
    batch, _, length = u.shape
    prompt_len, device = cell.fields.get("P", 0), setting.device
    inputs = u[..., prompt_len:].permute(2, 0, 1).contiguous()  # inputs[t]: one contiguous step

    def run_once() -> tuple[dict[str, Any], torch.Tensor]:
        if method == "offline":
            y, seconds = common.timed(lambda: causal_conv(u, h), device)
            return {"seconds": seconds, "setup": 0.0, "chunks": [(0, length, seconds)]}, y
        stepper, setup = common.timed(lambda: STEPPERS[method](h, length, batch), device)
        ys: list[torch.Tensor] = []
        if prompt_len:
            y_prompt, prefill = common.timed(lambda: stepper.prefill(u[..., :prompt_len]), device)
            after_prefill = stepper.nbytes
        record = common.timed_steps(
            lambda t: ys.append(stepper.step(inputs[t])),
            len(inputs),
            device,
            lambda: stepper.nbytes,
        )
        record["setup"] = setup
        if prompt_len:
            common.add_prefill(record, prompt_len, prefill, after_prefill)
        y = torch.stack(ys, dim=-1)
        return record, torch.cat([y_prompt, y], dim=-1) if prompt_len else y

    return common.repeat_runs(run_once, lambda y: common.rel_err(y, reference), setting)


def peak_bytes(config: Any) -> int:
    """An upper estimate of the memory of the largest run: the naive engine's three
    (batch, channels, L) buffers, and the float64 reference's FFT convolution (~8 of them)."""
    size = common.DTYPES[config.dtype].itemsize
    return config.batch * config.channels * config.longest * (3 * size + 8 * 8)


def run(config: LayerConfig) -> dict[str, Any]:
    """Run the sweep; the report (machine, config, rows, slopes, ratios, failures)."""
    lengths = sorted(set(config.lengths))
    warm = min(config.warmup_len, lengths[0])

    def measure_per_token(method, operands, cell, setting) -> dict[str, Any]:
        row = measure(method, operands, cell, setting)
        return row | {"per_token_s": row["total_s"] / cell.size}

    report = common.sweep(
        "layer",
        config,
        tols=common.DEFAULT_TOL,
        groups=[None],
        cells=[common.Cell({"L": n}, n, f"L={n}") for n in lengths],
        warm=common.Cell({"L": warm}, warm, "warm-up"),
        measure=measure_per_token,
        row_fields=("channels", "batch"),
        operands=open_conv(config, max(lengths[-1], warm)),
    )
    report["slopes"] = common.slopes(report["rows"], config)
    report["ratios"] = common.ratios_at_largest(report["rows"], RATIOS, ("L",))
    return report


# ------------------------------------------------------------------------------ output


def table(report: dict[str, Any]) -> str:
    """The terminal/Markdown summary: total time per L and method, ratios, cache, slopes."""
    rows, cfg = report["rows"], report["config"]
    methods = list(cfg["methods"])
    pairs = [p for p in RATIOS[:2] if p[0] in methods and p[1] in methods]
    total = [(m, m, lambda r: common.fmt_seconds(r["total_s"])) for m in methods]
    header, body = common.method_grid(rows, ("L",), total, pairs)
    for name, key in (("slope", "all"), (f"slope L>={cfg['slope_from']}", "tail")):
        fitted = [report["slopes"][m].get(key) for m in methods]
        if key == "all" or cfg["slope_from"] is not None:
            body.append(
                [name, *("-" if s is None else f"{s:.2f}" for s in fitted), *[""] * len(pairs)]
            )
    cached = [m for m in methods if m != "offline"]
    cache = [(f"{m} cache", m, lambda r: common.fmt_bytes(r["peak_cache_bytes"])) for m in cached]
    online = [m for m in methods if m in ONLINE_METHODS]
    steps = [(f"{m} median / p99.9 / max", m, common.latency_cell) for m in online]
    lines = [
        f"## Layer benchmark: total time for L steps (median of up to {cfg['repeats']} runs)",
        "",
        f"Machine: {common.machine_line(report['machine'])}",
        f"Layer: {cfg['channels']} channels, batch {cfg['batch']}, {cfg['dtype']}, "
        f"budget {cfg['budget']:g} s per run. Slope: least squares of log time on log L.",
        "",
        common.markdown_table(header, body),
        "",
        common.grid(rows, ("L",), cache) if cached else "",
        "",
        "Time of one step (the fastest run's), and the largest over its median. "
        + common.idle_line(report["machine"]),
        "",
        common.grid(rows, ("L",), steps) if online else "",
        "",
        *common.notes(report, ("L",)),
    ]
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
    methods, cached = cfg["methods"], [m for m in cfg["methods"] if m != "offline"]
    total = plots.method_lines(rows, methods, "L", "total_s")
    for line in total:
        slope = report["slopes"][line["method"]]["all"]
        line["label"] += "" if slope is None else f" (slope {slope:.2f})"
    per_position = plots.per_position("layer_time_per_token", rows, cached, "L")
    offline = [r for r in rows if r["method"] == "offline" and r["status"] == "ok"]
    if offline:  # not stepped: its time per token at the largest L as a flat reference line
        last = max(offline, key=lambda r: r["L"])
        per_position.lines.append(
            {"method": "offline", "label": f"offline (L={last['L']})", "linestyle": "--"}
            | {"x": [1, last["L"]], "y": [last["per_token_s"]] * 2}
        )
    cache = plots.method_lines(rows, cached, "L", "peak_cache_bytes")
    return plots.figures(
        report,
        out,
        f"D={cfg['channels']}, B={cfg['batch']}",
        [
            plots.Plot(
                "layer_total_time",
                total,
                "generated length L",
                "total time (s)",
                "Online convolution: total time for L steps",
            ),
            per_position,
            plots.Plot(
                "layer_cache_bytes",
                cache,
                "generated length L",
                "peak bytes held",
                "Cache (engine buffers) against L",
            ),
            plots.step_latency("layer_step_latency", rows, methods, "L"),
        ],
    )
