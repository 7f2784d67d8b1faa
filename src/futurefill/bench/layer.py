"""``futurefill bench layer`` and ``bench prompt``: one online convolution, method against method.

``layer``: for every L of the sweep, L random inputs (B, D) are fed one step at a time and the
outputs kept; then they are checked against the float64 offline convolution. ``prompt`` (the
paper's setting): for every (P, K) of a grid, ``prefill`` of the P prompt inputs at once (timed),
then K inputs stepped (timed), on a filter of length P + K; all P + K outputs are checked.
Methods:

* every registered method (:data:`futurefill.online.METHODS`): its engine, one input per step;
* ``compiled-<method>`` (asked for by name; ``layer`` only): the compiled layer step of that
  method, a :class:`~futurefill.decoder.Decoder` with ``compile=True`` over a one-layer model
  (:class:`LayerModel`: one :class:`futurefill.nn.LongConv`), on CUDA one CUDA graph a step;
* ``recompute``: a full FFT convolution of the prefix at every step, its last output kept (no
  cache; O(L^2 log L));
* ``offline``: one FFT convolution of the whole sequence (not online: the floor; O(L log L)).

``layer --steps S`` times only the last S steps of every L: the first L - S inputs are prefilled
at once (the engine's ``prefill``), which is how a long L (2^20) gets a latency figure for every
method in seconds. Every step is timed on the host and, on CUDA, on the device as well (CUDA
events around it: p50 / p99 / p99.9 in ``device_step_*``; on CPU these are the host times, and
``step_clock`` says which).

After a prompt (FutureFill paper, section 5) naive decodes in O(P K + K^2) and holds O(P + K);
continuous prefills in O(P log P), decodes in O(K log^2 K) and holds O(K), independent of P.

Steppers come from :data:`STEPPERS` (name -> factory ``(h, max_len, batch_size) -> stepper`` with
``step(u_t)``, ``prefill(u)`` and ``nbytes``); a test may put a wrong one there to see the
agreement check fail.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

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
from futurefill.bench.tables import (
    Section,
    cache_cell,
    device_latency_cell,
    latency_cell,
    seconds_of,
)
from futurefill.bench.timing import add_prefill, timed, timed_steps
from futurefill.decoder import Decoder
from futurefill.fftconv import causal_conv
from futurefill.nn import LongConv
from futurefill.online import METHODS, make_engine

ONLINE_METHODS = tuple(METHODS)
LAYER_METHODS = (*ONLINE_METHODS, "recompute", "offline")  # the default of bench layer
COMPILED_METHODS = tuple(f"compiled-{m}" for m in ONLINE_METHODS)


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


class LayerModel(nn.Module):
    """One depthwise long convolution (:class:`futurefill.nn.LongConv` of the filters ``h``
    ``(channels, N)``) as a model a :class:`~futurefill.decoder.Decoder` decodes: its token ids
    are ignored, its inputs are staged beside them (``prompt`` ``(batch, P, channels)`` for a
    prefill, the buffer ``step_input`` ``(batch, 1, channels)`` for a step), and its logits are
    the convolution's outputs ``(batch, n, channels)``. A session of any ``max_len <= N``
    decodes the first ``max_len`` taps, so one model (one compiled graph per method) serves
    every L of a sweep."""

    def __init__(self, h: torch.Tensor, batch: int):
        super().__init__()
        channels, length = h.shape
        self.h = nn.Parameter(h, requires_grad=False)
        self.conv = LongConv(channels, length, filter=lambda n: self.h[:, :n])
        self.register_buffer("step_input", h.new_zeros(batch, 1, channels))
        self.prompt: torch.Tensor | None = None
        self.prompt_output: torch.Tensor | None = None  # the last prefill's, every position

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` ``(batch, n)`` -> the outputs ``(batch, n, channels)`` for the staged
        inputs."""
        if ids.shape[1] == 1:
            return self.conv(self.step_input)
        self.prompt_output = self.conv(self.prompt)
        return self.prompt_output


class CompiledLayer:
    """The compiled layer step of ``method``: a compiled :class:`~futurefill.decoder.Decoder`
    of ``max_len`` over a :class:`LayerModel`, with a stepper's ``prefill``, ``step``,
    ``nbytes`` and ``close`` (which ends the decoder's session: the model serves the next)."""

    def __init__(self, model: LayerModel, method: str, max_len: int, batch_size: int):
        self.model = model
        self.decoder = Decoder(
            model, batch_size=batch_size, max_len=max_len, method=method, compile=True
        )
        self._ids = torch.zeros(batch_size, dtype=torch.long, device=model.h.device)

    @property
    def nbytes(self) -> int:
        return self.decoder.nbytes

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` ``(batch, channels, P)`` -> the outputs ``(batch, channels, P)``."""
        self.model.prompt = u.transpose(1, 2)
        self.decoder.prefill(self._ids[:, None].expand(-1, u.shape[-1]))
        return self.model.prompt_output.transpose(1, 2)

    def step(self, u_t: torch.Tensor) -> torch.Tensor:
        """``u_t`` ``(batch, channels)`` -> ``y_t`` ``(batch, channels)``."""
        self.model.step_input.copy_(u_t[:, None])
        return self.decoder.step(self._ids).logits

    def close(self) -> None:
        self.decoder.close()


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
    methods: tuple[str, ...] = option(
        LAYER_METHODS, "methods", choices=(*LAYER_METHODS, *COMPILED_METHODS), nargs="+"
    )
    warmup_len: int = option(256, "length of every method's warm-up run", type=LENGTH)
    steps: int | None = option(
        None,
        "time the last S steps of every L only, after a prefill of the first L - S inputs "
        "at once (default: every step)",
        type=LENGTH,
    )


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


class ConvOperands(NamedTuple):
    """What one cell of a convolution sweep runs on."""

    h: torch.Tensor  # (channels, n): the filters, in the working dtype, on the device
    u: torch.Tensor  # (batch, channels, n): the inputs
    reference: torch.Tensor  # (batch, channels, n): the float64 offline convolution
    prefill_len: int  # inputs prefilled at once before the steps
    layer_model: Callable[[], LayerModel]  # the group's one-layer model (built at first call)


def open_conv(config: Any, longest: int):
    """``open_group`` and ``open_cell`` of a sweep over one convolution: seeded float64 filters
    with a slow decay (as long-convolution models learn them) and inputs of ``longest``
    positions; a cell of size n gets their first n in the working dtype, with the float64
    offline convolution as its reference (:class:`ConvOperands`). It prefills its ``P`` inputs
    (``prompt``), or all but its last ``config.steps`` (``layer --steps``)."""

    def open_group(_: None, device: torch.device, dtype: torch.dtype) -> tuple:
        gen = torch.Generator().manual_seed(config.seed)
        decay = 1.0 / (1.0 + 0.05 * torch.arange(longest, dtype=torch.float64))
        h = torch.randn(config.channels, longest, generator=gen, dtype=torch.float64) * decay
        gen.manual_seed(config.seed + 1)
        u = torch.randn(config.batch, config.channels, longest, generator=gen, dtype=torch.float64)
        model = functools.cache(
            lambda: LayerModel(h.to(device=device, dtype=dtype), config.batch).eval()
        )
        return h, u, device, dtype, model

    def open_cell(full: tuple, cell: Cell) -> ConvOperands:
        h, u, device, dtype, model = full
        h = h[:, : cell.size].to(device=device, dtype=dtype).contiguous()
        u = u[..., : cell.size].to(device=device, dtype=dtype).contiguous()
        steps = getattr(config, "steps", None) or cell.size
        prefill_len = cell.fields.get("P", max(0, cell.size - steps))
        reference = causal_conv(u.to(torch.float64), h.to(torch.float64))
        return ConvOperands(h, u, reference, prefill_len, model)

    return open_group, open_cell


def make_stepper(method: str, operands: ConvOperands, length: int, batch: int) -> Any:
    """A stepper of ``method`` for ``length`` steps of ``batch`` rows: an engine
    (:data:`STEPPERS`) or a :class:`CompiledLayer` over the group's model."""
    if method in COMPILED_METHODS:
        return CompiledLayer(
            operands.layer_model(), method.removeprefix("compiled-"), length, batch
        )
    return STEPPERS[method](operands.h, length, batch)


def measure(method: str, operands: ConvOperands, cell: Cell, setting: Setting) -> dict:
    """Run ``method`` on ``operands``: prefill their first ``prefill_len`` inputs (when there
    are any), step through the rest (host and device time of each step); its measured row
    fields, ``steps`` the steps timed (``L`` for offline, one convolution of all)."""
    h, u, reference, prompt_len, _ = operands
    batch, _, length = u.shape
    device = setting.device
    inputs = u[..., prompt_len:].permute(2, 0, 1).contiguous()  # inputs[t]: one contiguous step

    def run_once() -> tuple[dict[str, Any], torch.Tensor]:
        if method == "offline":
            y, seconds = timed(lambda: causal_conv(u, h), device)
            return {"seconds": seconds, "setup": 0.0, "chunks": [(0, length, seconds)]}, y
        stepper, setup = timed(lambda: make_stepper(method, operands, length, batch), device)
        ys: list[torch.Tensor] = []
        if prompt_len:
            y_prompt, prefill = timed(lambda: stepper.prefill(u[..., :prompt_len]), device)
            after_prefill = stepper.nbytes
        record = timed_steps(
            lambda t: ys.append(stepper.step(inputs[t])),
            len(inputs),
            device,
            lambda: stepper.nbytes,
            device_time=True,
        )
        if isinstance(stepper, CompiledLayer):
            stepper.close()
        record["setup"] = setup
        if prompt_len:
            add_prefill(record, prompt_len, prefill, after_prefill)
        y = torch.stack(ys, dim=-1)
        return record, torch.cat([y_prompt, y], dim=-1) if prompt_len else y

    row = repeat_runs(run_once, lambda y: rel_err(y, reference), setting)
    steps = length if method == "offline" else length - prompt_len
    return row | {"steps": steps} | ({"prefilled": prompt_len} if "P" not in cell.fields else {})


def steps_note(report: dict[str, Any]) -> list[str]:
    """With ``--steps``: a line saying which steps of each L were timed."""
    steps = report["config"]["steps"]
    if steps is None:
        return []
    return [
        f"- --steps {steps}: at each L > {steps} the first L - {steps} inputs were prefilled at "
        f"once and only the last {steps} steps timed (the total includes the prefill)"
    ]


def check_layer(config: LayerConfig) -> None:
    """The compiled layer steps run in float32 or float64 only."""
    compiled = [m for m in config.methods if m in COMPILED_METHODS]
    if compiled and config.dtype not in ("float32", "float64"):
        raise ValueError(
            f"--methods {' '.join(compiled)} need --dtype float32 or float64, got {config.dtype}"
        )


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
DEVICE_LATENCY = Section(
    "Device time of one step (the fastest run's; CUDA events around each step, host time where "
    "there is no CUDA device: step_clock in the JSON):",
    "{m} p50 / p99 / p99.9",
    "device_step_p50_s",
    device_latency_cell,
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
        Section(
            "Time per step (the steps' time over their number):",
            "{m} per step",
            "per_token_s",
            seconds_of("per_token_s"),
        ),
        Section("", "{m} cache", "peak_cache_bytes", cache_cell),
        LATENCY,
        DEVICE_LATENCY,
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
        "total_s per_token_s steps prefilled setup_s peak_cache_bytes",
        "step_median_s step_p99_s step_p999_s step_max_s step_max_at device_step_p50_s "
        "device_step_p99_s device_step_p999_s device_step_max_s step_clock",
    ),
    ratios=(
        ("naive", "epoched"),
        ("naive", "continuous"),
        ("recompute", "continuous"),
        ("continuous", "offline"),
        ("deamortized", "continuous"),
        ("continuous", "compiled-continuous"),
        ("compiled-naive", "compiled-continuous"),
    ),
    check=check_layer,
    notes=steps_note,
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
        DEVICE_LATENCY,
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
