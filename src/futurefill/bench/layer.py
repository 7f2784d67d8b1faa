"""``futurefill bench layer`` and ``bench prompt``: one online convolution, method against method.

``layer``: for every L of the sweep, L random inputs (B, D) are fed one step at a time and the
outputs kept; then they are checked against the float64 offline convolution. ``prompt`` (the
paper's setting): for every (P, K) of a grid, ``prefill`` of the P prompt inputs at once (timed),
then K inputs stepped (timed), on a filter of length P + K; all P + K outputs are checked.
Methods:

* every registered method (:data:`futurefill.online.METHODS`): its engine, one input per step;
* ``recompute``: a full FFT convolution of the prefix at every step, its last output kept (no
  cache; O(L^2 log L));
* ``offline``: one FFT convolution of the whole sequence (not online: the floor; O(L log L)).

After a prompt (FutureFill paper, section 5) naive decodes in O(P K + K^2) and holds O(P + K);
continuous prefills in O(P log P), decodes in O(K log^2 K) and holds O(K), independent of P.

Steppers come from :data:`STEPPERS` (name -> factory ``(h, max_len, batch_size) -> stepper`` with
``step(u_t)``, ``prefill(u)`` and ``nbytes``); a test may put a wrong one there to see the
agreement check fail.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from futurefill.bench import common, plots
from futurefill.bench.options import (
    DTYPES,
    LENGTH,
    SIZE,
    LengthSweep,
    Options,
    lengths_option,
    option,
)
from futurefill.bench.recompute import Recompute
from futurefill.bench.runs import Cell, Setting, rel_err, repeat_runs
from futurefill.bench.tables import Section, cache_cell, latency_cell, seconds_of
from futurefill.bench.timing import add_prefill, timed, timed_steps
from futurefill.fftconv import causal_conv
from futurefill.online import METHODS, make_engine

ONLINE_METHODS = tuple(METHODS)
LAYER_METHODS = (*ONLINE_METHODS, "recompute", "offline")


class RecomputeConv(Recompute):
    """No cache: at step t, the FFT convolution of all t + 1 inputs so far; keep the last output.

    Holds only the inputs (B, D, L); O(t log t) per step, O(L^2 log L) for L steps.
    """

    def __init__(self, h: torch.Tensor, max_len: int, batch_size: int):
        super().__init__(
            torch.zeros(batch_size, h.shape[0], max_len, dtype=h.dtype, device=h.device)
        )
        self.h = h[:, :max_len]
        # Outputs go to one preallocated buffer: thousands of small long-lived tensors between
        # ever larger FFT temporaries fragment the heap (3 GB resident at L = 2048).
        self._y = torch.zeros(max_len, batch_size, h.shape[0], dtype=h.dtype, device=h.device)

    def forward(self, prefix: torch.Tensor) -> torch.Tensor:
        t = prefix.shape[-1] - 1
        return self._y[t].copy_(causal_conv(prefix, self.h[:, : t + 1])[:, :, t])


def _engine_factory(method: str):
    return lambda h, max_len, batch_size: make_engine(
        h, method, max_len=max_len, batch_size=batch_size
    )


STEPPERS = {**{m: _engine_factory(m) for m in ONLINE_METHODS}, "recompute": RecomputeConv}


@dataclasses.dataclass
class ConvOptions(Options):
    """The layer's shape (the CLI flags have the same names)."""

    channels: int = option(128, "channels D", type=SIZE)
    batch: int = option(1, "batch size B", type=SIZE)


@dataclasses.dataclass
class LayerConfig(ConvOptions, LengthSweep):
    """Options of ``bench layer``."""

    lengths: tuple[int, ...] = lengths_option(
        (2**k for k in range(8, 15)), "generated lengths L to sweep"
    )
    methods: tuple[str, ...] = option(LAYER_METHODS, "methods", choices=LAYER_METHODS, nargs="+")
    warmup_len: int = option(256, "length of every method's warm-up run", type=LENGTH)


@dataclasses.dataclass
class PromptConfig(ConvOptions):
    """Options of ``bench prompt``."""

    prompt_lens: tuple[int, ...] = lengths_option((1024, 4096), "prompt lengths P")
    gen_lens: tuple[int, ...] = lengths_option((256, 1024, 4096), "generated lengths K")
    methods: tuple[str, ...] = option(ONLINE_METHODS, "methods", choices=ONLINE_METHODS, nargs="+")
    warmup_len: int = option(128, "P and K of every method's warm-up run", type=LENGTH)

    @property
    def longest(self) -> int:
        return max(self.prompt_lens) + max(self.gen_lens)


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

    def open_cell(full: tuple, cell: Cell) -> tuple:
        h, u, device, dtype = full
        h = h[:, : cell.size].to(device=device, dtype=dtype).contiguous()
        u = u[..., : cell.size].to(device=device, dtype=dtype).contiguous()
        return h, u, causal_conv(u.to(torch.float64), h.to(torch.float64))

    return open_group, open_cell


def measure(method: str, operands: tuple, cell: Cell, setting: Setting) -> dict:
    """Run ``method`` on ``operands`` = (h, u, float64 reference): prefill the cell's first ``P``
    inputs (when it has a P), step through the rest; its measured row fields."""
    h, u, reference = operands
    batch, _, length = u.shape
    prompt_len, device = cell.fields.get("P", 0), setting.device
    inputs = u[..., prompt_len:].permute(2, 0, 1).contiguous()  # inputs[t]: one contiguous step

    def run_once() -> tuple[dict[str, Any], torch.Tensor]:
        if method == "offline":
            y, seconds = timed(lambda: causal_conv(u, h), device)
            return {"seconds": seconds, "setup": 0.0, "chunks": [(0, length, seconds)]}, y
        stepper, setup = timed(lambda: STEPPERS[method](h, length, batch), device)
        ys: list[torch.Tensor] = []
        if prompt_len:
            y_prompt, prefill = timed(lambda: stepper.prefill(u[..., :prompt_len]), device)
            after_prefill = stepper.nbytes
        record = timed_steps(
            lambda t: ys.append(stepper.step(inputs[t])),
            len(inputs),
            device,
            lambda: stepper.nbytes,
        )
        record["setup"] = setup
        if prompt_len:
            add_prefill(record, prompt_len, prefill, after_prefill)
        y = torch.stack(ys, dim=-1)
        return record, torch.cat([y_prompt, y], dim=-1) if prompt_len else y

    return repeat_runs(run_once, lambda y: rel_err(y, reference), setting)


def peak_bytes(config: Any) -> int:
    """An upper estimate of the memory of the largest run: the naive engine's three
    (batch, channels, L) buffers, and the float64 reference's FFT convolution (~8 of them)."""
    size = DTYPES[config.dtype].itemsize
    return config.batch * config.channels * config.longest * (3 * size + 8 * 8)


LATENCY = Section(
    "Time of one step (the fastest run's), and the largest over its median. {idle}",
    "{m} median / p99.9 / max",
    "step_max_s",
    latency_cell,
)
# What LAYER and PROMPT share: one convolution's operands, run and memory estimate.
CONV: dict[str, Any] = {
    "operands": open_conv,
    "measure": measure,
    "peak_bytes": peak_bytes,
    "plot_title": "D={channels}, B={batch}",
    "row_fields": ("channels", "batch"),
}
LAYER = common.Benchmark(
    name="layer",
    summary="one online convolution, total time against L",
    config=LayerConfig,
    **common.OVER_LENGTHS,
    **CONV,
    title="Layer benchmark: total time for L steps",
    setting="Layer: {channels} channels, batch {batch}, {dtype}, budget {budget:g} s per run. "
    "Slope: least squares of log time on log L.",
    sections=(
        Section("", "{m}", "total_s", seconds_of("total_s"), ratios=True, slopes=True),
        Section("", "{m} cache", "peak_cache_bytes", cache_cell),
        LATENCY,
    ),
    plots=(
        plots.Plot(
            "layer_total_time", "L", "total_s", "Online convolution: total time for L steps"
        ),
        plots.per_position("layer_time_per_token", "L"),
        plots.cache_bytes("layer_cache_bytes", "L", "Cache (engine buffers) against L"),
        plots.step_latency("layer_step_latency", "L"),
    ),
    columns=common.csv_columns(
        "method L",
        "total_s per_token_s setup_s peak_cache_bytes",
        "step_median_s step_p99_s step_p999_s step_max_s step_max_at",
    ),
    ratios=(
        ("naive", "epoched"),
        ("naive", "continuous"),
        ("recompute", "continuous"),
        ("continuous", "offline"),
        ("deamortized", "continuous"),
    ),
)
PROMPT = common.Benchmark(
    name="prompt",
    summary="prompt of length P, then K generated steps",
    config=PromptConfig,
    **common.AFTER_PROMPTS,
    # From small to large total length, so budget projections come from smaller cells.
    cells=lambda c: sorted(
        {(p, k) for p in c.prompt_lens for k in c.gen_lens}, key=lambda pk: (sum(pk), pk)
    ),
    warm=lambda c: (c.warmup_len, c.warmup_len),
    **CONV,
    title="Prompt benchmark: prefill P inputs, then decode K steps",
    setting="Layer: {channels} channels, batch {batch}, {dtype}, budget {budget:g} s per run; "
    "cache = peak bytes held by the engine.",
    sections=(
        Section("Decode time (K steps):", "{m}", "decode_s", seconds_of("decode_s"), ratios=True),
        Section("Prefill time (P inputs at once):", "{m}", "prefill_s", seconds_of("prefill_s")),
        Section("Peak bytes held by the engine:", "{m}", "peak_cache_bytes", cache_cell),
        LATENCY,
    ),
    plots=(
        plots.Plot(
            "prompt_decode_time",
            "K",
            "decode_s",
            "Decode time for K steps after a prompt of length P",
            by="P",
        ),
        plots.prefill_time("prompt_prefill_time", by="K"),
        plots.cache_bytes(
            "prompt_cache_bytes", "K", "Engine memory after a prompt of length P", by="P"
        ),
    ),
    columns=common.csv_columns(
        "method P K",
        "prefill_s decode_s total_s per_token_s cache_bytes_after_prefill peak_cache_bytes",
    ),
    ratios=(("naive", "epoched"), ("naive", "continuous")),
)


def run(config: LayerConfig | PromptConfig) -> dict[str, Any]:
    """Run ``bench layer`` (a :class:`LayerConfig`) or ``bench prompt``; the report."""
    return common.run(LAYER if isinstance(config, LayerConfig) else PROMPT, config)
