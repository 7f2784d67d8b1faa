"""``futurefill bench model`` and ``bench context``: a language model generating tokens.

``model``: for every mixer, a randomly initialised :class:`~futurefill.model.ConvLM` (seeded)
generates L tokens greedily, one step per token, each token the argmax of the previous logits (the
real feedback loop: nothing is pre-computed); tokens/s and token latency against L. ``context``:
the model's forward on P random prompt tokens (timed: ``prefill_s``), then K greedy steps (timed:
``decode_s``): how fast does the model decode once it has seen P tokens? Naive decoding costs
O(P) per token, FutureFill O(log^2) amortised. One model per mixer serves every cell: its
``max_len`` is the longest run (the STU filters depend on it). Methods:

* every registered method (:data:`futurefill.online.METHODS`): a
  :class:`~futurefill.decoder.Decoder` of the model with that method, one token per step;
* ``compiled``: continuous, each token one ``torch.compile`` graph (``Decoder(compile=True)``);
  ``compiled-<method>`` the same with every other method;
* ``recompute``: no cache, ``model(ids[:, :t+1])[:, -1]`` at every step (O(L^2 log L)).

Each run's logits (the prompt's and every step's) are checked against a float64 copy of the
model's parallel forward pass over the tokens that run fed. In ``context`` every method must also
choose the same K + 1 greedy tokens as the first method that passed; tokens may only differ where
the float64 reference's two largest logits are within the tolerance of each other (a tie at the
working precision: recorded as ``tokens_match: false`` but not a failure).

Steppers come from :data:`MODEL_STEPPERS` (name -> factory ``(model, max_len, batch_size) ->
stepper`` with the decoder's ``prefill``, ``step``, ``nbytes`` and ``close()``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from futurefill.bench import common, plots
from futurefill.bench.options import (
    DTYPES,
    LENGTH,
    POSITIVE,
    SIZE,
    LengthSweep,
    Options,
    lengths_option,
    option,
)
from futurefill.bench.recompute import Recompute
from futurefill.bench.runs import Cell, Setting, rel_err, repeat_runs
from futurefill.bench.tables import Section, cache_cell, fmt_bytes, latency_cell, seconds_of
from futurefill.bench.timing import add_prefill, timed, timed_steps
from futurefill.decoder import Decoder, DecoderOutput
from futurefill.model import HYBRIDS, MIXERS, ConvLM, ConvLMConfig
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
# The HyenaDNA release's largest model (``hyenadna-large-1m-seqlen``): its hyper-parameters
# besides width and depth (``--d-model 256 --n-layers 8`` give its shape).
HYENADNA_LARGE_1M = {
    "max_len": 1_000_002,
    "order": 2,
    "emb_dim": 5,
    "filter_order": 64,
    "num_inner_mlps": 2,
    "activation_freq": 10.0,
}
BENCH_MIXERS = (*MIXERS, *HYBRIDS, "hyenadna")


class RecomputeStepper(Recompute):
    """No cache: the parallel forward pass over all tokens so far at every step; last logits.
    The :class:`~futurefill.decoder.Decoder`'s interface (prefill, step, nbytes, close)."""

    def __init__(self, model, max_len: int, batch_size: int):
        device = next(model.parameters()).device
        super().__init__(torch.zeros(batch_size, max_len, dtype=torch.long, device=device))
        self.model = model

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor) -> DecoderOutput:
        self._inputs[:, : ids.shape[1]] = ids
        self._t = ids.shape[1]
        return self.forward(ids)

    @torch.inference_mode()
    def forward(self, prefix: torch.Tensor) -> DecoderOutput:
        logits = self.model(prefix)
        return DecoderOutput(logits[:, -1], logits[:, -1].argmax(dim=-1))

    def close(self) -> None:
        """Nothing to release."""


def _decoder(method: str, compile: bool = False):
    """The factory of a :class:`~futurefill.decoder.Decoder` of ``method``."""

    def make(model, max_len: int, batch: int) -> Decoder:
        return Decoder(model, batch_size=batch, max_len=max_len, method=method, compile=compile)

    return make


# Every registered method, eager and compiled ("compiled" alone: continuous), and no cache.
MODEL_STEPPERS = {
    **{m: _decoder(m) for m in METHODS},
    "compiled": _decoder("continuous", compile=True),
    **{f"compiled-{m}": _decoder(m, compile=True) for m in METHODS if m != "continuous"},
    "recompute": RecomputeStepper,
}
MODEL_METHODS = ("naive", "epoched", "continuous", "recompute")
CONTEXT_METHODS = ("naive", "epoched", "continuous")


@dataclasses.dataclass
class ModelOptions(Options):
    """The model's shape (the CLI flags have the same names)."""

    batch: int = option(1, "batch size B", type=SIZE)
    d_model: int = option(128, "model width", type=SIZE)
    n_layers: int = option(4, "layers", type=SIZE)
    vocab_size: int = option(256, "vocabulary", type=SIZE)


@dataclasses.dataclass
class ModelConfig(ModelOptions, LengthSweep):
    """Options of ``bench model``."""

    lengths: tuple[int, ...] = lengths_option(
        (2**k for k in range(7, 12)), "generated lengths (context)"
    )
    methods: tuple[str, ...] = option(
        MODEL_METHODS, "methods", choices=tuple(MODEL_STEPPERS), nargs="+"
    )
    mixers: tuple[str, ...] = option(
        ("stu_tensordot", "longconv", "stu", "hyena"), "mixers", choices=BENCH_MIXERS, nargs="+"
    )


@dataclasses.dataclass
class ContextConfig(ModelOptions):
    """Options of ``bench context``."""

    prompt_lens: tuple[int, ...] = lengths_option(
        (1024, 4096),
        "context lengths P: prompt tokens prefilled before decoding",
        aliases=("--prompt-len", "--contexts"),
    )
    new_tokens: int = option(256, "tokens K decoded at each P", type=LENGTH)
    methods: tuple[str, ...] = option(
        CONTEXT_METHODS, "methods", choices=tuple(MODEL_STEPPERS), nargs="+"
    )
    mixers: tuple[str, ...] = option(("stu_tensordot",), "mixers", choices=BENCH_MIXERS, nargs="+")
    budget: float = option(60.0, "seconds one prefill + decode may take (projected)", type=POSITIVE)

    @property
    def longest(self) -> int:
        return max(self.prompt_lens) + self.new_tokens


def hyenadna_model(vocab_size: int, d_model: int, n_layers: int, max_len: int) -> torch.nn.Module:
    """A randomly initialised :class:`~futurefill.pretrained.HyenaLM` shaped like
    HyenaDNA-large-1m (filters on its 1M grid, or ``max_len`` where longer; MLP 4 x width) at
    this width and depth (the release's: 256 and 8)."""
    from futurefill.pretrained import HyenaLM, HyenaLMConfig

    hyper = {**HYENADNA_LARGE_1M, "max_len": max(HYENADNA_LARGE_1M["max_len"], max_len)}
    return HyenaLM(
        HyenaLMConfig(
            vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, d_inner=4 * d_model, **hyper
        )
    )


def build_model(config: Any, mixer: str, max_len: int, device, dtype):
    """The seeded, randomly initialised model for ``mixer`` and its float64 reference copy:
    a ConvLM, or for ``hyenadna`` a :class:`~futurefill.pretrained.HyenaLM` shaped like
    HyenaDNA-large-1m (:func:`hyenadna_model`) at the config's width and depth."""
    torch.manual_seed(config.seed)
    width = {"vocab_size": config.vocab_size, "d_model": config.d_model}
    if mixer == "hyenadna":
        model = hyenadna_model(config.vocab_size, config.d_model, config.n_layers, max_len)
    else:
        # The STU needs filters of at least its num_eigh positions, however short the runs.
        length = max(max_len, ConvLMConfig.num_eigh)
        shape = {"n_layers": config.n_layers, "max_len": length}
        if mixer in HYBRIDS:  # the published shape (Flash STU's window: 512)
            model = ConvLM(ConvLMConfig.hybrid(mixer, **width, **shape))
        else:
            model = ConvLM(ConvLMConfig(**width, **shape, mixer=mixer))
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

    def open_cell(group: tuple, cell: Cell) -> tuple:
        model, reference_model, tokens = group
        return model, References(reference_model), tokens[:, : cell.fields.get("P", 1)]

    return open_group, open_cell


def measure(method: str, operands: tuple, cell: Cell, setting: Setting) -> dict:
    """Generate the cell's ``L`` (or, after prefilling ``P`` prompt tokens, ``K``) tokens greedily
    with ``method``, each step timed (host time, the argmax included: one token's latency); its
    measured row fields. With a prompt the row holds, under ``_tokens``, the K + 1 greedy tokens
    of the first run (the argmax of the last prefill logits and of every step's), for
    :func:`compare`, which removes them."""
    model, references, tokens = operands
    batch, prompt_len = tokens.shape[0], cell.fields.get("P", 0)
    length, device = cell.fields.get("K", cell.fields.get("L")), setting.device
    runs: list[dict[str, Any]] = []

    def run_once() -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor, Any]]:
        make = MODEL_STEPPERS[method]
        stepper, setup = timed(lambda: make(model, prompt_len + length, batch), device)
        fed, logits, tok, prompt_logits = [], [], tokens[:, 0], None
        if prompt_len:
            prompt_out, prefill = timed(lambda: stepper.prefill(tokens), device)
            after_prefill, tok, prompt_logits = stepper.nbytes, prompt_out.greedy, prompt_out.logits

        def step(_: int) -> None:
            nonlocal tok
            fed.append(tok)
            out = stepper.step(tok)
            logits.append(out.logits)
            tok = out.greedy

        with torch.inference_mode():
            record = timed_steps(step, length, device, lambda: stepper.nbytes)
        stepper.close()
        record.update(setup=setup, first_step=0 if prompt_len or length == 1 else 1)
        if prompt_len:
            add_prefill(record, prompt_len, prefill, after_prefill)
        runs.append(record)
        return record, (torch.stack(fed, dim=1), torch.stack(logits, dim=1), prompt_logits)

    greedy: list[torch.Tensor] = []

    def check(outputs: tuple[torch.Tensor, torch.Tensor, Any]) -> float:
        fed, logits, prompt_logits = outputs
        if not prompt_len:
            return rel_err(logits, references(fed))
        greedy.append(torch.cat([fed, logits[:, -1:].argmax(dim=-1)], dim=1))
        reference = references(torch.cat([tokens, fed], dim=1))[:, prompt_len - 1 :]
        return rel_err(torch.cat([prompt_logits[:, None], logits], dim=1), reference)

    row = repeat_runs(run_once, check, setting)
    row["tokens_per_s"] = batch * length / row.get("decode_s", row["total_s"])
    if prompt_len:
        return row | {"_tokens": greedy[0]}
    return row | {"first_token_s": min(runs, key=lambda r: r["seconds"])["steps"][0]}


def check_dtype(config: Any) -> None:
    """The compiled methods step in float32 or float64 only (half precisions decode eagerly)."""
    compiled = [m for m in config.methods if m.startswith("compiled")]
    if compiled and config.dtype in ("float16", "bfloat16"):
        raise ValueError(
            f"--methods {' '.join(compiled)} need --dtype float32 or float64, got {config.dtype}"
        )


def peak_bytes(config: Any) -> int:
    """An upper estimate of the memory of the longest run: every layer's naive engine (three
    buffers of batch x width x filters x length, the full STU's bank of 48 filters seen by every
    channel), and the float64 reference's and the working model's parallel forward (four
    activations of the MLP's width, 4 x d_model, each)."""
    size = DTYPES[config.dtype].itemsize
    filters = 48 if "stu" in config.mixers else 2  # full STU bank; Hyena's two orders
    width = config.batch * config.d_model
    return config.longest * (
        3 * size * config.n_layers * width * filters + 4 * (8 + size) * 4 * width
    )


def compare_tokens(
    tokens: torch.Tensor,
    expected: torch.Tensor,
    reference: torch.Tensor,
    prompt_len: int,
    tol: float,
) -> dict[str, Any]:
    """Whether greedy ``tokens`` (B, K + 1) equal ``expected``; where not, whether it is a tie.

    ``reference`` (B, P + K, vocab) holds the float64 logits of the sequence ``tokens`` came
    from; the logits that chose token j sit at position P - 1 + j. At the first difference, a gap
    between the reference's two largest logits within 2 ``tol`` (relative to the largest reference
    logit, as in the agreement check) is a tie that two correct methods may break differently.
    """
    differs = (tokens != expected).any(dim=0).nonzero()
    if differs.numel() == 0:
        return {"tokens_match": True}
    step = int(differs[0])
    row = int((tokens[:, step] != expected[:, step]).nonzero()[0])
    top = reference[row, prompt_len - 1 + step].topk(2).values
    gap = float((top[0] - top[1]).item() / max(reference.abs().max().item(), 1e-300))
    return {
        "tokens_match": False,
        "first_token_diff": step,
        "token_gap": gap,
        "tie": gap <= 2 * tol,
    }


def compare(rows: list[dict[str, Any]], operands: tuple, tol: float) -> None:
    """Greedy tokens of every ok row against the first ok row's (a difference fails the row
    unless it is a tie of the float64 reference); removes the rows' ``_tokens``."""
    _, references, prompt = operands
    expected: tuple[str, torch.Tensor] | None = None
    for row in rows:
        tokens = row.pop("_tokens", None)
        if row["status"] != "ok":
            continue
        if expected is None:
            expected = (row["method"], tokens)
            row["tokens_match"] = True
            continue
        fed = torch.cat([prompt, tokens[:, :-1]], dim=1)
        check = compare_tokens(tokens, expected[1], references(fed), prompt.shape[1], tol)
        row.update(check, tokens_compared_with=expected[0])
        if not check["tokens_match"] and not check["tie"]:
            row["status"] = (
                f"FAILED (greedy tokens differ from {expected[0]}'s at step "
                f"{check['first_token_diff']}, where the reference's top-2 logit gap "
                f"{check['token_gap']:.1e} > 2 tol)"
            )


def tie_notes(report: dict[str, Any]) -> list[str]:
    """A line per method whose greedy tokens differ from the first method's at a tie."""
    return [
        f"- {r['mixer']} {r['method']} at P={r['P']}: greedy tokens differ from "
        f"{r['tokens_compared_with']}'s from step {r['first_token_diff']} on, at a tie "
        f"(reference top-2 logit gap {r['token_gap']:.1e} <= 2 tol)"
        for r in report["rows"]
        if r.get("tokens_match") is False and r["status"] == "ok"
    ] + ["- greedy tokens compared across methods"]


def tokens_per_s(r: dict[str, Any]) -> str:
    return f"{r['tokens_per_s']:.0f}"


CHECKED = "of the logits from the float64 forward pass"
SHAPE = (
    "ConvLM of each mixer (hyenadna: a HyenaLM shaped like HyenaDNA-large-1m: order-2 Hyena, "
    "emb_dim 5, filter FFN 64 wide with 2 inner layers, filters on the 1M grid, MLP 4 x "
    "d_model; flash_stu, striped_hyena: ConvLMConfig.hybrid's shapes): d_model {d_model}, "
    "{n_layers} layers, vocab {vocab_size}, batch {batch}, random weights, greedy"
)
# What MODEL and CONTEXT share: the model's operands, run, memory estimate and agreement check.
LM: dict[str, Any] = {
    "operands": open_models,
    "measure": measure,
    "peak_bytes": peak_bytes,
    "tols": MODEL_TOL,
    "checked": CHECKED,
    "row_fields": ("batch", "d_model", "n_layers"),
    "check": check_dtype,
}
MODEL = common.Benchmark(
    name="model",
    summary="the ConvLM end to end: tokens/s against context length",
    config=ModelConfig,
    **common.OVER_LENGTHS,
    **LM,
    title="Model benchmark: tokens/s generating L tokens one at a time",
    setting=SHAPE + "; budget {budget:g} s per run.",
    sections=(
        Section("", "{m} tok/s", "tokens_per_s", tokens_per_s, ratios=True, slopes=True),
        Section("", "{m} cache", "peak_cache_bytes", cache_cell),
        Section(
            "Time of one token after the first (the fastest run's; the first builds the session's "
            "engines: first_token_s in the JSON), and the largest over its median. {idle}",
            "{m} median / p99.9 / max",
            "step_max_s",
            latency_cell,
        ),
    ),
    plot_title="ConvLM d={d_model}, {n_layers} layers, B={batch}",
    plots=(
        plots.Plot(
            "model_tokens_per_s", "L", "tokens_per_s", "ConvLM generation throughput", by="mixer"
        ),
        plots.per_position("model_time_per_token", "L", by="mixer"),
        plots.cache_bytes("model_cache_bytes", "L", "Decoding cache against L", by="mixer"),
        plots.step_latency("model_step_latency", "L", by="mixer"),
    ),
    columns=common.csv_columns(
        "mixer method L",
        "total_s tokens_per_s per_token_s setup_s peak_cache_bytes",
        "first_token_s step_median_s step_p99_s step_p999_s step_max_s step_max_at",
    ),
    ratios=(("naive", "epoched"), ("naive", "continuous"), ("recompute", "continuous")),
)
CONTEXT = common.Benchmark(
    name="context",
    summary="the ConvLM: decode tokens/s after a prompt of P tokens, against P",
    config=ContextConfig,
    **common.AFTER_PROMPTS,
    cells=lambda c: [(p, c.new_tokens) for p in sorted(set(c.prompt_lens))],
    warm=lambda c: (min(c.warmup_len, *c.prompt_lens), min(c.warmup_len, c.new_tokens)),
    **LM,
    title="Context benchmark: decode tokens/s after a prompt of P tokens, K = {new_tokens} new",
    setting=SHAPE + "; budget {budget:g} s per run (prefill + decode).",
    sections=(
        Section(
            "Decoding K tokens after the prefill (a/b: decode time of a over that of b, the "
            "speed-up of b in tokens/s):",
            "{m} tok/s",
            "tokens_per_s",
            tokens_per_s,
            ratios=True,
        ),
        Section("Prefill of the P prompt tokens:", "{m}", "prefill_s", seconds_of("prefill_s")),
        Section(
            "Bytes the cache holds (prefilled / peak):",
            "{m}",
            "cache_bytes_after_prefill",
            lambda r: f"{fmt_bytes(r['cache_bytes_after_prefill'])} / {cache_cell(r)}",
        ),
    ),
    plot_title="d={d_model}, {n_layers} layers, B={batch}",
    plots=(
        plots.Plot(
            "context_tokens_per_s",
            "P",
            "tokens_per_s",
            "Decode throughput at context P, K={new_tokens} new tokens",
            by="mixer",
        ),
        plots.prefill_time("context_prefill_time", by="mixer"),
        plots.cache_bytes(
            "context_cache_bytes", "P", "Decoding cache at context P, K={new_tokens}", by="mixer"
        ),
    ),
    columns=common.csv_columns(
        "mixer method P K",
        "tokens_per_s decode_s per_token_s prefill_s total_s setup_s cache_bytes_after_prefill "
        "peak_cache_bytes",
        "tokens_match projected_s",
    ),
    # (numerator, denominator) of decode-time ratios = speed-up of the denominator in tokens/s.
    ratios=(
        ("naive", "continuous"),
        ("naive", "epoched"),
        ("naive", "compiled"),
        ("recompute", "continuous"),
        ("recompute", "compiled"),
    ),
    compare=compare,
    notes=tie_notes,
)


def run(config: ModelConfig | ContextConfig) -> dict[str, Any]:
    """Run ``bench model`` (a :class:`ModelConfig`) or ``bench context``; the report."""
    return common.run(MODEL if isinstance(config, ModelConfig) else CONTEXT, config)
