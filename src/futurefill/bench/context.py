"""``futurefill bench context``: the ConvLM's decode throughput at a given context length.

For every context length P, every mixer and every method: a fresh decoding session with
``max_len = P + K``, the model's forward on P random token ids (seeded; timed: ``prefill_s``),
then K greedy decoding steps (the forward on one token per sequence), each fed the argmax of the
previous logits (timed in dyadic chunks: ``decode_s``). Reported per cell: decode tokens/s
``B K / decode_s``, prefill time, the bytes the session holds after the prefill and at its peak.
One model per mixer serves every P: its ``max_len`` is the largest P + K (the STU filters depend
on it).

This is the setting of the question "how fast does the model decode once it has seen P tokens?":
naive decoding costs O(P) per token, FutureFill (epoched, continuous) O(log^2) amortised.

Agreement, per cell: the P + K logits (prefill and decode) must be within ``tol`` of a float64 copy
of the model's parallel forward pass over the prompt and the tokens that run fed, and every method
must choose the same K + 1 greedy tokens as the first method that passed. Tokens may only differ
where the float64 reference's two largest logits are within the tolerance of each other (a tie
at the working precision: recorded as ``tokens_match: false`` but not a failure).

Methods come from :data:`futurefill.bench.model.MODEL_STEPPERS`; ``recompute`` (a forward pass
over the whole context at every step) is left out by default and, when asked for, budget-skipped.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from futurefill.bench import common, plots
from futurefill.bench.model import (
    MODEL_STEPPERS,
    MODEL_TOL,
    build_model,
    generate_timed,
    model_peak_bytes,
)

CONTEXT_METHODS = ("naive", "epoched", "continuous")
# (numerator, denominator) of decode-time ratios = speed-up of the denominator in tokens/s.
RATIOS = (
    ("naive", "continuous"),
    ("naive", "epoched"),
    ("naive", "compiled"),
    ("recompute", "continuous"),
    ("recompute", "compiled"),
)


@dataclasses.dataclass
class ContextConfig:
    """Options of the context benchmark (the CLI flags have the same names)."""

    prompt_lens: tuple[int, ...] = (1024, 4096)
    new_tokens: int = 256
    methods: tuple[str, ...] = CONTEXT_METHODS
    mixers: tuple[str, ...] = ("stu_tensordot",)
    batch: int = 1
    d_model: int = 128
    n_layers: int = 4
    vocab_size: int = 256
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None  # None: every available core
    repeats: int = 3
    budget: float = 60.0  # seconds one prefill + decode may take (projected from smaller P)
    warmup_len: int = 32  # every (mixer, method) prefills and decodes this many tokens first
    tol: float | None = None  # None: by dtype (model.MODEL_TOL)
    seed: int = 0
    out: Path = Path("results")
    progress: bool = True
    plots: bool = True


CONFIG = ContextConfig


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
            logits = self.model(ids)
        self._seen.append((ids, logits))
        return logits


def run_cell(
    method: str,
    model,
    references: References,
    prompt: torch.Tensor,
    new_tokens: int,
    *,
    repeats: int,
    budget: float,
    tol: float,
    device: torch.device,
) -> dict[str, Any]:
    """Prefill ``prompt`` (B, P), decode ``new_tokens`` greedily, up to ``repeats`` times.

    The row holds, under ``_tokens``, the K + 1 greedy tokens of the first run (B, K + 1): the
    argmax of the last prefill logits and of every decoding step's logits (for :func:`compare`,
    which removes them).
    """
    batch, prompt_len = prompt.shape

    def run_once() -> tuple[dict[str, Any], tuple[torch.Tensor, ...]]:
        common.sync(device)
        began = time.perf_counter()
        stepper = MODEL_STEPPERS[method](model, prompt_len + new_tokens, batch)
        common.sync(device)
        setup = time.perf_counter() - began
        began = time.perf_counter()
        with torch.inference_mode():
            prompt_logits = stepper.prefill(prompt)
        common.sync(device)
        prefill = time.perf_counter() - began
        after_prefill = stepper.nbytes
        first = prompt_logits[:, -1].argmax(dim=-1)
        fed, logits, chunks, peak, _ = generate_timed(stepper, first, new_tokens, device)
        stepper.close()
        decode = sum(c for _, _, c in chunks)
        record = {"seconds": prefill + decode, "setup": setup, "prefill": prefill}
        record.update(decode=decode, chunks=chunks, after_prefill=after_prefill)
        record["peak"] = max(peak, after_prefill)
        return record, (prompt_logits, fed, logits)

    tokens: list[torch.Tensor] = []

    def check(outputs: tuple[torch.Tensor, ...]) -> float:
        prompt_logits, fed, logits = outputs
        tokens.append(torch.cat([fed, logits[:, -1:].argmax(dim=-1)], dim=1))
        reference = references(torch.cat([prompt, fed], dim=1))
        return common.rel_err(torch.cat([prompt_logits, logits], dim=1), reference)

    records, err = common.repeat_runs(run_once, check, repeats, budget, tol)
    times = common.prefill_decode_times(records, new_tokens)
    return {
        "method": method,
        "P": prompt_len,
        "K": new_tokens,
        "status": common.status_of(err, tol),
        **times,
        "tokens_per_s": batch * new_tokens / times["decode_s"],
        "setup_s": common.median([r["setup"] for r in records]),
        "max_rel_err": err,
        "tol": tol,
        "chunks": common.median_chunks([r["chunks"] for r in records], offset=prompt_len),
        "_tokens": tokens[0],
    }


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
    scale = reference.abs().max().item()
    top = reference[row, prompt_len - 1 + step].topk(2).values
    gap = float((top[0] - top[1]).item() / max(scale, 1e-300))
    return {
        "tokens_match": False,
        "first_token_diff": step,
        "token_gap": gap,
        "tie": gap <= 2 * tol,
    }


def peak_bytes(config: ContextConfig) -> int:
    """An upper estimate of the memory of the largest run (see :func:`model.model_peak_bytes`)."""
    return model_peak_bytes(config, max(config.prompt_lens) + config.new_tokens)


def compare(rows: list[dict[str, Any]], operands: tuple, tol: float) -> None:
    """Greedy tokens of every ok row against the first ok row's (a difference fails the row
    unless it is a tie of the float64 reference); removes the rows' ``_tokens``."""
    _, references, prompt = operands
    expected: tuple[str, torch.Tensor] | None = None
    for row in rows:
        tokens = row.pop("_tokens")
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


def run(config: ContextConfig) -> dict[str, Any]:
    """Run the sweep over context lengths for every mixer; the report."""
    unknown = [m for m in config.methods if m not in MODEL_STEPPERS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {tuple(MODEL_STEPPERS)}")
    prompt_lens = sorted(set(config.prompt_lens))
    if not prompt_lens or prompt_lens[0] < 1:
        raise ValueError(f"prompt lengths must be positive, got {config.prompt_lens}")
    if config.new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {config.new_tokens}")
    device = common.resolve_device(config.device)
    dtype = common.DTYPES[config.dtype]
    tol = MODEL_TOL[dtype] if config.tol is None else config.tol
    k = config.new_tokens
    max_len = prompt_lens[-1] + k
    gen = torch.Generator().manual_seed(config.seed)
    prompts = torch.randint(0, config.vocab_size, (config.batch, prompt_lens[-1]), generator=gen)
    prompts = prompts.to(device)

    def open_cell(models, cell: common.Cell) -> tuple:
        model, reference_model = models
        return model, References(reference_model), prompts[:, : cell.fields["P"]]

    def measure(method, operands, cell, repeats, budget):
        model, references, prompt = operands
        new_tokens = cell.fields["K"]
        return run_cell(
            method,
            model,
            references,
            prompt,
            new_tokens,
            repeats=repeats,
            budget=budget,
            tol=tol,
            device=device,
        )

    warm_p, warm_k = min(config.warmup_len, prompt_lens[0]), min(config.warmup_len, k)
    machine, rows, gate = common.run_sweep(
        "context",
        config,
        tol=tol,
        device=device,
        groups=config.mixers,
        cells=[common.Cell({"P": p, "K": k}, p + k, f"P={p}") for p in prompt_lens],
        warm=common.Cell({"P": warm_p, "K": warm_k}, warm_p + warm_k, "warm-up"),
        open_group=lambda mixer: build_model(config, mixer, max_len, device, dtype),
        open_cell=open_cell,
        measure=measure,
        compare=lambda rows, operands: compare(rows, operands, tol),
        checked="of the logits from the float64 forward pass",
    )
    ratios = common.per_mixer_ratios(rows, config.mixers, RATIOS, ("P",), "decode_s", K=k)
    return common.finish_report(
        "context",
        config,
        machine,
        device,
        rows,
        gate,
        tol,
        ("batch", "d_model", "n_layers"),
        ratios=ratios,
    )


# ------------------------------------------------------------------------------ output


def model_name(cfg: dict[str, Any]) -> str:
    """What the mixers build: ConvLM, or HyenaLM shaped like HyenaDNA-large-1m."""
    names = []
    if any(m != "hyenadna" for m in cfg["mixers"]):
        names.append("ConvLM")
    if "hyenadna" in cfg["mixers"]:
        names.append(
            "HyenaLM (mixer hyenadna: HyenaDNA-large-1m's order-2 Hyena, emb_dim 5, filter FFN 64 "
            "wide with 2 inner layers, filters on the 1M grid, MLP 4 x d_model)"
        )
    return " / ".join(names)


def table(report: dict[str, Any]) -> str:
    """Per mixer: decode tokens/s per P and method with speed-ups; prefill time and cache bytes."""
    rows = report["rows"]
    cfg = report["config"]
    methods = list(cfg["methods"])
    pairs = [p for p in RATIOS if p[0] in methods and p[1] in methods]
    lines = [
        f"## Context benchmark: decode tokens/s after a prompt of P tokens "
        f"(K = {cfg['new_tokens']} new tokens, median of up to {cfg['repeats']} runs)",
        "",
        f"Machine: {common.machine_line(report['machine'])}",
        f"{model_name(cfg)}: d_model {cfg['d_model']}, {cfg['n_layers']} layers, vocab "
        f"{cfg['vocab_size']}, batch {cfg['batch']}, random weights, greedy; budget "
        f"{cfg['budget']:g} s per run (prefill + decode).",
        "",
    ]

    speed = [(f"{m} tok/s", m, lambda r: f"{r['tokens_per_s']:.0f}") for m in methods]
    memory = [(f"{m} prefill", m, lambda r: common.fmt_seconds(r["prefill_s"])) for m in methods]
    memory += [
        (
            f"{m} cache (prefilled / peak)",
            m,
            lambda r: (
                f"{common.fmt_bytes(r['cache_bytes_after_prefill'])} / "
                f"{common.fmt_bytes(r['peak_cache_bytes'])}"
            ),
        )
        for m in methods
        if m != "recompute"
    ]
    for mixer in cfg["mixers"]:
        mine = [r for r in rows if r["mixer"] == mixer]
        lines += [
            f"### mixer {mixer}",
            "",
            "Decoding K tokens after the prefill (a/b: decode time of a over that of b, the "
            "speed-up of b in tokens/s):",
            "",
            common.markdown_table(*common.method_grid(mine, ("P",), speed, pairs, "decode_s")),
            "",
            "Prefill of the P prompt tokens, and the bytes the cache holds:",
            "",
            common.markdown_table(*common.method_grid(mine, ("P",), memory)),
            "",
        ]
    lines += [
        f"- {r['mixer']}: decode tokens/s of {r['denominator']} over {r['numerator']} at the "
        f"largest context both reached (P={r['P']}, K={r['K']}): {r['ratio']:.2f}x"
        for r in report["ratios"]
    ]
    lines += [
        f"- {r['mixer']} {r['method']} at P={r['P']}: greedy tokens differ from "
        f"{r['tokens_compared_with']}'s from step {r['first_token_diff']} on, at a tie "
        f"(reference top-2 logit gap {r['token_gap']:.1e} <= 2 tol)"
        for r in rows
        if r.get("tokens_match") is False and r["status"] == "ok"
    ]
    checked = "of the logits from the float64 forward pass"
    lines += common.notes({**report, "ratios": []}, ("P",), checked=checked)
    lines[-1] += "; greedy tokens compared across methods"
    return "\n".join(lines) + "\n"


CSV_COLUMNS = common.csv_columns(
    "mixer method P K",
    "tokens_per_s decode_s per_token_s prefill_s total_s setup_s cache_bytes_after_prefill "
    "peak_cache_bytes",
    "tokens_match projected_s",
    "batch d_model n_layers",
)


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    cfg, rows = report["config"], report["rows"]
    methods, k = cfg["methods"], cfg["new_tokens"]
    cached = [m for m in methods if m != "recompute"]
    groups = {"by": "mixer", "values": cfg["mixers"], "label": "{method} {value}"}
    kind = "HyenaLM" if tuple(cfg["mixers"]) == ("hyenadna",) else "ConvLM"
    what = f"{kind} d={cfg['d_model']}, {cfg['n_layers']} layers, B={cfg['batch']}"
    return plots.figures(
        report,
        out,
        what,
        [
            (
                "context_tokens_per_s",
                plots.method_lines(rows, methods, "P", "tokens_per_s", **groups),
                "context length P (prompt tokens before decoding)",
                "decode tokens / s",
                f"Decode throughput at context P, K={k} new tokens",
            ),
            (
                "context_prefill_time",
                plots.method_lines(rows, methods, "P", "prefill_s", **groups),
                "context length P",
                "prefill time (s)",
                "Prefill time of P prompt tokens",
            ),
            (
                "context_cache_bytes",
                plots.method_lines(rows, cached, "P", "peak_cache_bytes", **groups),
                "context length P",
                "peak bytes held by the cache",
                f"Decoding cache at context P, K={k}",
            ),
        ],
    )
