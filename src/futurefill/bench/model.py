"""``futurefill bench model``: the ConvLM end to end, tokens/s against context length.

For every mixer, a randomly initialised :class:`~futurefill.model.ConvLM` (seeded) generates L
tokens greedily, one step per token, each token the argmax of the previous logits (the real
feedback loop: nothing is pre-computed). Methods:

* ``naive``, ``epoched``, ``continuous``, ``deamortized``: the model's forward, one token per
  call, in a ``futurefill.decoding(model, batch_size=batch, max_len=L, method=method)`` session;
* ``compiled``: continuous, each token one ``torch.compile`` graph (``generate(compile=True)``);
  ``compiled-deamortized`` the same with the deamortized engines;
* ``recompute``: no cache, ``model(ids[:, :t+1])[:, -1]`` at every step (O(L^2 log L)).

Each run's logits are checked against a float64 copy of the model's parallel forward pass over the
tokens that run generated. Steppers come from :data:`MODEL_STEPPERS` (name -> factory
``(model, max_len, batch_size) -> stepper`` with ``step(ids_t) -> logits``, ``nbytes``,
``prefill(ids) -> logits`` and ``close()``). :func:`measure` also serves ``bench context``: a cell
with a prompt length ``P`` prefills P prompt tokens first.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch

from futurefill.bench import common, plots
from futurefill.bench.common import LENGTH, SIZE, option
from futurefill.generation import compiled_step
from futurefill.model import MIXERS, ConvLM, ConvLMConfig
from futurefill.nn import decoding
from futurefill.online import METHODS

# Agreement tolerance of the logits, relative to their largest magnitude. Half precisions round the
# activations of every layer (not only the outputs, as in the layer benchmark): measured about
# 3e-3 (float16) and 1.5e-2 (bfloat16) for 4 layers of width 128; float32 stays near 1e-6.
MODEL_TOL = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.float16: 2e-2,
    torch.bfloat16: 1e-1,
}
RATIOS = (("naive", "epoched"), ("naive", "continuous"), ("recompute", "continuous"))
# The HyenaDNA release's largest model (``hyenadna-large-1m-seqlen``): its hyper-parameters
# besides width and depth (``--d-model 256 --n-layers 8`` give its shape).
HYENADNA_LARGE_1M = {
    "max_seq_len": 1_000_002,
    "order": 2,
    "emb_dim": 5,
    "filter_order": 64,
    "num_inner_mlps": 2,
    "activation_freq": 10.0,
}
BENCH_MIXERS = (*MIXERS, "hyenadna")


class CachedStepper:
    """The model's forward in a decoding session of the given method (what :func:`generate`
    runs); with ``compiled``, each step is one ``torch.compile`` graph (continuous engines, as
    ``generate(compile=True)``); ``close()`` ends the session."""

    def __init__(self, model, max_len: int, batch_size: int, method: str, compiled: bool = False):
        self.model = model
        self.session = decoding(model, batch_size=batch_size, max_len=max_len, method=method)
        self._step = compiled_step(model, next(model.parameters()).device) if compiled else None
        self._traced = contextlib.ExitStack()

    @property
    def nbytes(self) -> int:
        return self.session.nbytes

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, P) -> (B, P, vocab)``: the prompt in one parallel pass, on a fresh session."""
        logits = self.model(ids)
        if self._step is not None:
            self._traced.enter_context(self.session.traced_steps())
        return logits

    @torch.inference_mode()
    def step(self, ids_t: torch.Tensor) -> torch.Tensor:
        """``(B,) -> (B, vocab)``: one token per sequence."""
        if self._step is None or not self.session.traced:
            logits = self.model(ids_t[:, None])[:, 0]  # eager (a compiled run's first token)
            if self._step is not None:
                self._traced.enter_context(self.session.traced_steps())
            return logits
        logits = self._step(ids_t[:, None])[0]
        self.session.advance()
        return logits

    def close(self) -> None:
        self._traced.close()
        self.session.close()


class RecomputeStepper:
    """No cache: the parallel forward pass over all tokens so far at every step; last logits."""

    def __init__(self, model, max_len: int, batch_size: int):
        self.model = model
        device = next(model.parameters()).device
        self._ids = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)
        self._t = 0

    @property
    def nbytes(self) -> int:
        return self._ids.numel() * self._ids.element_size()

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        self._ids[:, : ids.shape[1]] = ids
        self._t = ids.shape[1]
        return self.model(ids)

    @torch.inference_mode()
    def step(self, ids_t: torch.Tensor) -> torch.Tensor:
        t = self._t
        self._ids[:, t] = ids_t
        self._t = t + 1
        return self.model(self._ids[:, : t + 1])[:, -1]

    def close(self) -> None:
        """Nothing to release."""


def _cached(method: str, compiled: bool = False):
    return lambda model, max_len, batch: CachedStepper(model, max_len, batch, method, compiled)


MODEL_STEPPERS = {
    **{m: _cached(m) for m in METHODS},
    "compiled": _cached("continuous", compiled=True),
    "compiled-deamortized": _cached("deamortized", compiled=True),
    "recompute": RecomputeStepper,
}
MODEL_METHODS = ("naive", "epoched", "continuous", "recompute")
CHECKED = "of the logits from the float64 forward pass"


@dataclasses.dataclass
class ModelConfig(common.Options):
    """Options of the model benchmark (the CLI flags have the same names)."""

    lengths: tuple[int, ...] = option(
        tuple(2**k for k in range(7, 12)), "generated lengths (context)", type=LENGTH, nargs="+"
    )
    methods: tuple[str, ...] = option(
        MODEL_METHODS, "methods", choices=tuple(MODEL_STEPPERS), nargs="+"
    )
    mixers: tuple[str, ...] = option(
        ("stu_tensordot", "longconv", "stu", "hyena"), "mixers", choices=BENCH_MIXERS, nargs="+"
    )
    batch: int = option(1, "batch size B", type=SIZE)
    d_model: int = option(128, "model width", type=SIZE)
    n_layers: int = option(4, "layers", type=SIZE)
    vocab_size: int = option(256, "vocabulary", type=SIZE)
    slope_from: int | None = option(None, "also fit the slope over L >= this", type=LENGTH)

    @property
    def longest(self) -> int:
        return max(self.lengths)


CONFIG = ModelConfig


def build_model(config: Any, mixer: str, max_len: int, device, dtype):
    """The seeded, randomly initialised model for ``mixer`` and its float64 reference copy:
    a ConvLM, or for ``hyenadna`` a :class:`~futurefill.pretrained.HyenaLM` shaped like
    HyenaDNA-large-1m (filters on its 1M grid, MLP 4 x width) at the config's width and depth."""
    torch.manual_seed(config.seed)
    width = {"vocab_size": config.vocab_size, "d_model": config.d_model}
    if mixer == "hyenadna":
        from futurefill.pretrained import HyenaLM, HyenaLMConfig

        hyper = {**HYENADNA_LARGE_1M, "max_seq_len": max(HYENADNA_LARGE_1M["max_seq_len"], max_len)}
        shape = {"n_layer": config.n_layers, "d_inner": 4 * config.d_model}
        model = HyenaLM(HyenaLMConfig(**width, **shape, **hyper))
    else:
        shape = {"n_layers": config.n_layers, "max_len": max_len, "mixer": mixer}
        model = ConvLM(ConvLMConfig(**width, **shape))
    model = model.eval().to(device=device, dtype=dtype)
    # From the cast model, so both hold the same (rounded) weights.
    return model, copy.deepcopy(model).to(dtype=torch.float64)


class References:
    """The float64 reference logits of token sequences, computed once per distinct sequence."""

    def __init__(self, reference_model):
        self.model = reference_model
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        for known, logits in self._seen:
            if torch.equal(known, ids):
                return logits
        with torch.no_grad():
            self._seen.append((ids, self.model(ids)))
        return self._seen[-1][1]


def open_models(config: Any, max_len: int):
    """``open_group`` and ``open_cell`` of a sweep over a model: one model per mixer; a cell's
    operands are the model, a cache of its float64 reference logits and the tokens it starts
    from: its ``P`` prompt tokens (seeded), or one random token per sequence."""
    gen = torch.Generator().manual_seed(config.seed)
    tokens = torch.randint(0, config.vocab_size, (config.batch, max_len), generator=gen)

    def open_group(mixer: str, device: torch.device, dtype: torch.dtype) -> tuple:
        return (*build_model(config, mixer, max_len, device, dtype), tokens.to(device))

    def open_cell(group: tuple, cell: common.Cell) -> tuple:
        model, reference_model, tokens = group
        return model, References(reference_model), tokens[:, : cell.fields.get("P", 1)]

    return open_group, open_cell


def measure(method: str, operands: tuple, cell: common.Cell, setting: common.Setting) -> dict:
    """Generate the cell's ``L`` (or, after prefilling ``P`` prompt tokens, ``K``) tokens greedily
    with ``method``, each step timed (host time, the argmax included: one token's latency); its
    measured row fields. With a prompt the row holds, under ``_tokens``, the K + 1 greedy tokens
    of the first run (the argmax of the last prefill logits and of every step's), for
    :func:`futurefill.bench.context.compare`, which removes them."""
    model, references, tokens = operands
    batch, prompt_len = tokens.shape[0], cell.fields.get("P", 0)
    length, device = cell.fields.get("K", cell.fields.get("L")), setting.device
    runs: list[dict[str, Any]] = []

    def run_once() -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor, Any]]:
        make = MODEL_STEPPERS[method]
        stepper, setup = common.timed(lambda: make(model, prompt_len + length, batch), device)
        fed, logits, tok, prompt_logits = [], [], tokens[:, 0], None
        if prompt_len:
            prompt_logits, prefill = common.timed(lambda: stepper.prefill(tokens), device)
            after_prefill, tok = stepper.nbytes, prompt_logits[:, -1].argmax(dim=-1)

        def step(_: int) -> None:
            nonlocal tok
            fed.append(tok)
            logits.append(stepper.step(tok))
            tok = logits[-1].argmax(dim=-1)

        with torch.inference_mode():
            record = common.timed_steps(step, length, device, lambda: stepper.nbytes)
        stepper.close()
        record.update(setup=setup, first_step=0 if prompt_len or length == 1 else 1)
        if prompt_len:
            common.add_prefill(record, prompt_len, prefill, after_prefill)
        runs.append(record)
        return record, (torch.stack(fed, dim=1), torch.stack(logits, dim=1), prompt_logits)

    greedy: list[torch.Tensor] = []

    def check(outputs: tuple[torch.Tensor, torch.Tensor, Any]) -> float:
        fed, logits, prompt_logits = outputs
        if not prompt_len:
            return common.rel_err(logits, references(fed))
        greedy.append(torch.cat([fed, logits[:, -1:].argmax(dim=-1)], dim=1))
        reference = references(torch.cat([tokens, fed], dim=1))
        return common.rel_err(torch.cat([prompt_logits, logits], dim=1), reference)

    row = common.repeat_runs(run_once, check, setting)
    seconds = row.get("decode_s", row["total_s"])
    row.update(tokens_per_s=batch * length / seconds, per_token_s=seconds / length)
    if prompt_len:
        return row | {"_tokens": greedy[0]}
    return row | {"first_token_s": min(runs, key=lambda r: r["seconds"])["steps"][0]}


def model_peak_bytes(config: Any) -> int:
    """An upper estimate of the memory of the longest run: every layer's naive engine (three
    buffers of batch x width x filters x length, the full STU's bank of 48 filters seen by every
    channel), and the float64 reference's and the working model's parallel forward (four
    activations of the MLP's width, 4 x d_model, each)."""
    size = common.DTYPES[config.dtype].itemsize
    filters = 48 if "stu" in config.mixers else 2  # full STU bank; Hyena's two orders
    width = config.batch * config.d_model
    return config.longest * (
        3 * size * config.n_layers * width * filters + 4 * (8 + size) * 4 * width
    )


peak_bytes = model_peak_bytes


def run(config: ModelConfig) -> dict[str, Any]:
    """Run the sweep for every mixer; the report (machine, config, rows, slopes, ratios)."""
    lengths = sorted(set(config.lengths))
    warm = min(config.warmup_len, lengths[0])
    report = common.sweep(
        "model",
        config,
        tols=MODEL_TOL,
        groups=config.mixers,
        cells=[common.Cell({"L": n}, n, f"L={n}") for n in lengths],
        warm=common.Cell({"L": warm}, warm, "warm-up"),
        operands=open_models(config, max(lengths[-1], warm)),
        measure=measure,
        checked=CHECKED,
        row_fields=("batch", "d_model", "n_layers"),
    )
    report["slopes"] = common.slopes(report["rows"], config)
    report["ratios"] = common.ratios_at_largest(report["rows"], RATIOS, ("L",))
    return report


# ------------------------------------------------------------------------------ output


def table(report: dict[str, Any]) -> str:
    """Per mixer: tokens/s per L and method, speed-ups, slopes; cache bytes; token latency."""
    rows, cfg = report["rows"], report["config"]
    methods = list(cfg["methods"])
    pairs = [p for p in RATIOS[:2] if p[0] in methods and p[1] in methods]
    lines = [
        f"## Model benchmark: tokens/s generating L tokens one at a time "
        f"(median of up to {cfg['repeats']} runs)",
        "",
        f"Machine: {common.machine_line(report['machine'])}",
        f"ConvLM: d_model {cfg['d_model']}, {cfg['n_layers']} layers, vocab {cfg['vocab_size']}, "
        f"batch {cfg['batch']}, random weights, greedy; budget {cfg['budget']:g} s per run.",
        "",
    ]
    columns = [(f"{m} tok/s", m, lambda r: f"{r['tokens_per_s']:.0f}") for m in methods]
    columns += [
        (f"{m} cache", m, lambda r: common.fmt_bytes(r["peak_cache_bytes"]))
        for m in methods
        if m != "recompute"
    ]
    steps = [(f"{m} median / p99.9 / max", m, common.latency_cell) for m in methods]
    for mixer in cfg["mixers"]:
        mine = [r for r in rows if r["mixer"] == mixer]
        header, body = common.method_grid(mine, ("L",), columns, pairs)
        slope = report["slopes"][mixer]
        slopes = ("-" if slope[m]["all"] is None else f"{slope[m]['all']:.2f}" for m in methods)
        body.append(["time slope", *slopes] + [""] * (len(header) - 1 - len(methods)))
        lines += [
            f"### mixer {mixer}",
            "",
            common.markdown_table(header, body),
            "",
            "Time of one token after the first (the fastest run's; the first builds the "
            "session's engines: first_token_s in the JSON), and the largest over its median. "
            + common.idle_line(report["machine"]),
            "",
            common.grid(mine, ("L",), steps),
            "",
        ]
    return "\n".join(lines + common.notes(report, ("L",), checked=CHECKED)) + "\n"


CSV_COLUMNS = common.csv_columns(
    "mixer method L",
    "total_s tokens_per_s per_token_s setup_s peak_cache_bytes",
    "first_token_s step_median_s step_p99_s step_p999_s step_max_s step_max_at",
    "batch d_model n_layers",
)
PER_POSITION_KEYS = ("mixer", "method", "L")  # columns of model_per_position.csv


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    cfg, rows = report["config"], report["rows"]
    methods, cached = cfg["methods"], [m for m in cfg["methods"] if m != "recompute"]
    groups = {"by": "mixer", "values": cfg["mixers"], "label": "{method} {value}"}
    return plots.figures(
        report,
        out,
        f"ConvLM d={cfg['d_model']}, {cfg['n_layers']} layers, B={cfg['batch']}",
        [
            plots.Plot(
                "model_tokens_per_s",
                plots.method_lines(rows, methods, "L", "tokens_per_s", **groups),
                "generated tokens L",
                "tokens / s",
                "ConvLM generation throughput",
            ),
            plots.per_position("model_time_per_token", rows, methods, "L", **groups),
            plots.Plot(
                "model_cache_bytes",
                plots.method_lines(rows, cached, "L", "peak_cache_bytes", **groups),
                "generated tokens L",
                "peak bytes held by the cache",
                "Decoding cache against L",
            ),
            plots.step_latency("model_step_latency", rows, methods, "L", **groups),
        ],
    )
