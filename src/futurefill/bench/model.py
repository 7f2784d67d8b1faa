"""``futurefill bench model``: the ConvLM end to end, tokens/s against context length.

For every mixer, a randomly initialised :class:`~futurefill.model.ConvLM` (seeded) generates L
tokens greedily, one :meth:`~futurefill.model.ConvLM.step` per token, each token the argmax of the
previous logits (the real feedback loop: nothing is pre-computed). Methods:

* ``naive``, ``epoched``, ``continuous``: the model's forward, one token per call, in a
  ``futurefill.decoding(model, batch_size=batch, max_len=L, method=method)`` session;
* ``recompute``: no cache, ``model(ids[:, :t+1])[:, -1]`` at every step (O(L^2 log L)).

Each run's logits are checked against a float64 copy of the model's parallel forward pass over the
tokens that run generated. Steppers come from :data:`MODEL_STEPPERS` (name -> factory
``(model, max_len, batch_size) -> stepper`` with ``step(ids_t) -> logits``, ``nbytes``,
``prefill(ids) -> logits``, which :mod:`futurefill.bench.context` uses, and ``close()``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from futurefill.bench import common, plots
from futurefill.generation import compiled_step
from futurefill.model import MIXERS, ConvLM, ConvLMConfig
from futurefill.nn import decoding
from futurefill.online import METHODS

MODEL_METHODS = ("naive", "epoched", "continuous", "recompute")
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
            logits = self.model(ids_t[:, None])[:, 0]  # eager (a compiled run's first chunk)
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
        prompt_len = ids.shape[1]
        self._ids[:, :prompt_len] = ids
        self._t = prompt_len
        return self.model(ids)

    @torch.inference_mode()
    def step(self, ids_t: torch.Tensor) -> torch.Tensor:
        t = self._t
        self._ids[:, t] = ids_t
        self._t = t + 1
        return self.model(self._ids[:, : t + 1])[:, -1]

    def close(self) -> None:
        """Nothing to release."""


def _cached(method: str) -> Callable[[Any, int, int], Any]:
    def factory(model, max_len: int, batch_size: int) -> CachedStepper:
        return CachedStepper(model, max_len, batch_size, method)

    return factory


MODEL_STEPPERS: dict[str, Callable[[Any, int, int], Any]] = {
    **{m: _cached(m) for m in METHODS},
    "compiled": lambda model, max_len, batch: CachedStepper(
        model, max_len, batch, "continuous", compiled=True
    ),
    "recompute": RecomputeStepper,
}


@dataclasses.dataclass
class ModelConfig:
    """Options of the model benchmark (the CLI flags have the same names)."""

    lengths: tuple[int, ...] = tuple(2**k for k in range(7, 12))
    methods: tuple[str, ...] = MODEL_METHODS
    mixers: tuple[str, ...] = ("stu_tensordot", "longconv", "stu", "hyena")
    batch: int = 1
    d_model: int = 128
    n_layers: int = 4
    vocab_size: int = 256
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None  # None: every available core
    repeats: int = 3
    budget: float = 30.0  # seconds one generation of L tokens may take (projected)
    warmup_len: int = 32  # every (mixer, method) generates this many tokens before the sweep
    slope_from: int | None = None
    tol: float | None = None  # None: by dtype (MODEL_TOL)
    seed: int = 0
    out: Path = Path("results")
    progress: bool = True
    plots: bool = True


CONFIG = ModelConfig


def generate_timed(
    stepper, first: torch.Tensor, length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, float]], int, np.ndarray]:
    """Greedy generation of ``length`` steps from tokens ``first`` (B,), timed in dyadic chunks
    and token by token (host time, the argmax included: the latency of one token).

    Returns the tokens fed (B, length), the logits of every step (B, length, vocab), the chunk
    times, the peak bytes the stepper held (sampled between chunks) and every token's time.
    The garbage collector is paused (:func:`common.paused_gc`).
    """
    step = stepper.step
    fed: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    chunks = []
    step_times = np.empty(length)
    peak = stepper.nbytes
    tok = first
    clock = time.perf_counter
    with torch.inference_mode(), common.paused_gc():
        common.sync(device)
        for start, stop in common.chunk_bounds(length):
            began = clock()
            for t in range(start, stop):
                before = clock()
                fed.append(tok)
                out = step(tok)
                logits.append(out)
                tok = out.argmax(dim=-1)
                step_times[t] = clock() - before
            common.sync(device)
            chunks.append((start, stop, clock() - began))
            peak = max(peak, stepper.nbytes)
    return torch.stack(fed, dim=1), torch.stack(logits, dim=1), chunks, peak, step_times


def run_cell(
    method: str,
    model,
    reference_model,
    first: torch.Tensor,
    length: int,
    *,
    repeats: int,
    budget: float,
    tol: float,
    device: torch.device,
) -> dict[str, Any]:
    """Generate ``length`` tokens with ``method`` up to ``repeats`` times; one result row."""
    batch = first.shape[0]

    def run_once() -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor]]:
        common.sync(device)
        began = time.perf_counter()
        stepper = MODEL_STEPPERS[method](model, length, batch)
        common.sync(device)
        setup = time.perf_counter() - began
        ids, logits, chunks, peak, steps = generate_timed(stepper, first, length, device)
        stepper.close()
        seconds = sum(c for _, _, c in chunks)
        record = {"seconds": seconds, "setup": setup, "chunks": chunks, "peak": peak}
        return {**record, "steps": steps}, (ids, logits)

    def check(outputs: tuple[torch.Tensor, torch.Tensor]) -> float:
        ids, logits = outputs
        with torch.no_grad():
            return common.rel_err(logits, reference_model(ids))

    records, err = common.repeat_runs(run_once, check, repeats, budget, tol)
    times = [r["seconds"] for r in records]
    total = common.median(times)
    fastest = min(records, key=lambda r: r["seconds"])
    return {
        "method": method,
        "L": length,
        "status": common.status_of(err, tol),
        "total_s": total,
        "tokens_per_s": batch * length / total,
        "per_token_s": total / length,
        "setup_s": common.median([r["setup"] for r in records]),
        "peak_cache_bytes": records[-1]["peak"],
        "max_rel_err": err,
        "tol": tol,
        "repeats": len(records),
        "times_s": times,
        "chunks": common.median_chunks([r["chunks"] for r in records]),
        "first_token_s": fastest["steps"][0],  # builds the session's engines
        **common.latency(fastest["steps"], first=1 if length > 1 else 0),
    }


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


def build_model(config: ModelConfig, mixer: str, max_len: int, device, dtype):
    """The seeded, randomly initialised model for ``mixer`` and its float64 reference copy:
    a ConvLM, or for ``hyenadna`` a :class:`~futurefill.pretrained.HyenaLM` shaped like
    HyenaDNA-large-1m (filters on its 1M grid, MLP 4 x width) at the config's width and depth."""
    torch.manual_seed(config.seed)
    if mixer == "hyenadna":
        from futurefill.pretrained import HyenaLM, HyenaLMConfig

        hyper = {**HYENADNA_LARGE_1M, "max_seq_len": max(HYENADNA_LARGE_1M["max_seq_len"], max_len)}
        model = HyenaLM(
            HyenaLMConfig(
                vocab_size=config.vocab_size,
                d_model=config.d_model,
                n_layer=config.n_layers,
                d_inner=4 * config.d_model,
                **hyper,
            )
        ).eval()
    else:
        model = ConvLM(
            ConvLMConfig(
                vocab_size=config.vocab_size,
                d_model=config.d_model,
                n_layers=config.n_layers,
                max_len=max_len,
                mixer=mixer,
            )
        ).eval()
    model = model.to(device=device, dtype=dtype)
    # From the cast model, so both hold the same (rounded) weights.
    reference = copy.deepcopy(model).to(dtype=torch.float64)
    return model, reference


def model_peak_bytes(config: Any, length: int) -> int:
    """An upper estimate of the memory of a run of ``length`` tokens: every layer's naive engine
    (three buffers of batch x width x filters x length, the full STU's bank of 48 filters seen by
    every channel), and the float64 reference's and the working model's parallel forward (four
    activations of the MLP's width, 4 x d_model, each)."""
    size = common.DTYPES[config.dtype].itemsize
    filters = 48 if "stu" in config.mixers else 2  # full STU bank; Hyena's two orders
    width = config.batch * config.d_model
    engines = 3 * size * config.n_layers * width * filters
    forwards = 4 * (8 + size) * 4 * width
    return length * (engines + forwards)


def peak_bytes(config: ModelConfig) -> int:
    return model_peak_bytes(config, max(config.lengths))


def run(config: ModelConfig) -> dict[str, Any]:
    """Run the sweep for every mixer; the report (machine, config, rows, slopes, ratios)."""
    unknown = [m for m in config.methods if m not in MODEL_STEPPERS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {tuple(MODEL_STEPPERS)}")
    lengths = sorted(set(config.lengths))
    if not lengths or lengths[0] < 1:
        raise ValueError(f"lengths must be positive, got {config.lengths}")
    device = common.resolve_device(config.device)
    dtype = common.DTYPES[config.dtype]
    tol = MODEL_TOL[dtype] if config.tol is None else config.tol
    max_len = max(lengths[-1], config.warmup_len)
    warm_len = min(config.warmup_len, lengths[0])
    gen = torch.Generator().manual_seed(config.seed)
    first = torch.randint(0, config.vocab_size, (config.batch,), generator=gen).to(device)

    def measure(method, models, cell, repeats, budget):
        length = cell.fields["L"]
        return run_cell(
            method, *models, first, length, repeats=repeats, budget=budget, tol=tol, device=device
        )

    machine, rows, gate = common.run_sweep(
        "model",
        config,
        tol=tol,
        device=device,
        groups=config.mixers,
        cells=[common.Cell({"L": n}, n, f"L={n}") for n in lengths],
        warm=common.Cell({"L": warm_len}, warm_len, "warm-up"),
        open_group=lambda mixer: build_model(config, mixer, max_len, device, dtype),
        open_cell=lambda models, cell: models,
        measure=measure,
        checked="of the logits from the float64 forward pass",
    )
    return common.finish_report(
        "model",
        config,
        machine,
        device,
        rows,
        gate,
        tol,
        ("batch", "d_model", "n_layers"),
        slopes={
            mixer: _slopes([r for r in rows if r["mixer"] == mixer], config)
            for mixer in config.mixers
        },
        ratios=common.per_mixer_ratios(rows, config.mixers, RATIOS, ("L",)),
    )


def _slopes(rows: list[dict[str, Any]], config: ModelConfig) -> dict[str, Any]:
    out = {}
    for method in config.methods:
        ok = [(r["L"], r["total_s"]) for r in rows if r["method"] == method and r["status"] == "ok"]
        entry: dict[str, Any] = {
            "all": common.fit_slope([x for x, _ in ok], [t for _, t in ok]),
            "points": len(ok),
        }
        if config.slope_from is not None:
            tail = [(x, t) for x, t in ok if x >= config.slope_from]
            entry["from"] = config.slope_from
            entry["tail"] = common.fit_slope([x for x, _ in tail], [t for _, t in tail])
        out[method] = entry
    return out


# ------------------------------------------------------------------------------ output


def table(report: dict[str, Any]) -> str:
    """Per mixer: tokens/s per L and method, speed-ups, slopes; cache bytes."""
    rows = report["rows"]
    cfg = report["config"]
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
        lines += [f"### mixer {mixer}", "", common.markdown_table(header, body), ""]
        lines += [
            "Time of one token after the first (the fastest run's; the first builds the "
            "session's engines: first_token_s in the JSON), and the largest over its median:",
            "",
            common.markdown_table(*common.method_grid(mine, ("L",), steps)),
            "",
        ]
    lines += common.notes(report, ("L",), checked="of the logits from the float64 forward pass")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = common.csv_columns(
    "mixer method L",
    "total_s tokens_per_s per_token_s setup_s peak_cache_bytes",
    "first_token_s step_median_s step_p99_s step_p999_s step_max_s step_max_at",
    "batch d_model n_layers",
)


PER_POSITION_KEYS = ("mixer", "method", "L")  # columns of model_per_position.csv


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    cfg, rows = report["config"], report["rows"]
    methods, mixers = cfg["methods"], cfg["mixers"]
    cached = [m for m in methods if m != "recompute"]
    groups = {"by": "mixer", "values": mixers, "label": "{method} {value}"}
    what = f"ConvLM d={cfg['d_model']}, {cfg['n_layers']} layers, B={cfg['batch']}"
    return plots.figures(
        report,
        out,
        what,
        [
            (
                "model_tokens_per_s",
                plots.method_lines(rows, methods, "L", "tokens_per_s", **groups),
                "generated tokens L",
                "tokens / s",
                "ConvLM generation throughput",
            ),
            (
                "model_time_per_token",
                plots.chunk_lines(rows, methods, "L", **groups),
                "position t (mean over dyadic chunks)",
                "time per token (s)",
                "Time per token against position, at the largest L run",
            ),
            (
                "model_cache_bytes",
                plots.method_lines(rows, cached, "L", "peak_cache_bytes", **groups),
                "generated tokens L",
                "peak bytes held by the cache",
                "Decoding cache against L",
            ),
            (
                "model_step_latency",
                plots.latency_lines(rows, methods, "L", **groups),
                f"position t (buckets of L/{common.LATENCY_BUCKETS} tokens)",
                "time of one token (s)",
                "Token latency against position, at the largest L run",
                {"logx": False},
            ),
        ],
    )
