"""``futurefill bench context``: the ConvLM's decode throughput at a given context length.

For every context length P, every mixer and every method: a fresh decoding session with
``max_len = P + K``, the model's forward on P random token ids (seeded; timed: ``prefill_s``),
then K greedy decoding steps (the forward on one token per sequence), each fed the argmax of the
previous logits (timed: ``decode_s``; :func:`futurefill.bench.model.measure`). Reported per cell:
decode tokens/s ``B K / decode_s``, prefill time, the bytes the session holds after the prefill
and at its peak. One model per mixer serves every P: its ``max_len`` is the largest P + K (the
STU filters depend on it).

This is the setting of the question "how fast does the model decode once it has seen P tokens?":
naive decoding costs O(P) per token, FutureFill (epoched, continuous) O(log^2) amortised.

Agreement, per cell: the P + K logits (prefill and decode) must be within ``tol`` of a float64 copy
of the model's parallel forward pass over the prompt and the tokens that run fed, and every method
must choose the same K + 1 greedy tokens as the first method that passed. Tokens may only differ
where the float64 reference's two largest logits are within the tolerance of each other (a tie
at the working precision: recorded as ``tokens_match: false`` but not a failure).

``recompute`` (a forward pass over the whole context at every step) is left out by default and,
when asked for, budget-skipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from futurefill.bench import common, model, plots
from futurefill.bench.common import LENGTH, SIZE, option

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
class ContextConfig(common.Options):
    """Options of the context benchmark (the CLI flags have the same names)."""

    prompt_lens: tuple[int, ...] = option(
        (1024, 4096),
        "context lengths P: prompt tokens prefilled before decoding",
        type=LENGTH,
        nargs="+",
        aliases=("--prompt-len", "--contexts"),
    )
    new_tokens: int = option(256, "tokens K decoded at each P", type=LENGTH)
    methods: tuple[str, ...] = option(
        CONTEXT_METHODS, "methods", choices=tuple(model.MODEL_STEPPERS), nargs="+"
    )
    mixers: tuple[str, ...] = option(
        ("stu_tensordot",), "mixers", choices=model.BENCH_MIXERS, nargs="+"
    )
    batch: int = option(1, "batch size B", type=SIZE)
    d_model: int = option(128, "model width", type=SIZE)
    n_layers: int = option(4, "layers", type=SIZE)
    vocab_size: int = option(256, "vocabulary", type=SIZE)
    budget: float = option(
        60.0, "seconds one prefill + decode may take (projected)", type=common.POSITIVE
    )

    @property
    def longest(self) -> int:
        return max(self.prompt_lens) + self.new_tokens


CONFIG = ContextConfig


peak_bytes = model.model_peak_bytes


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


def run(config: ContextConfig) -> dict[str, Any]:
    """Run the sweep over context lengths for every mixer; the report."""
    prompt_lens, k = sorted(set(config.prompt_lens)), config.new_tokens
    warm_p, warm_k = min(config.warmup_len, prompt_lens[0]), min(config.warmup_len, k)
    report = common.sweep(
        "context",
        config,
        tols=model.MODEL_TOL,
        groups=config.mixers,
        cells=[common.Cell({"P": p, "K": k}, p + k, f"P={p}") for p in prompt_lens],
        warm=common.Cell({"P": warm_p, "K": warm_k}, warm_p + warm_k, "warm-up"),
        operands=model.open_models(config, prompt_lens[-1] + k),
        measure=model.measure,
        compare=compare,
        checked=model.CHECKED,
        row_fields=("batch", "d_model", "n_layers"),
    )
    report["ratios"] = common.ratios_at_largest(report["rows"], RATIOS, ("P", "K"), "decode_s")
    return report


# ------------------------------------------------------------------------------ output


def model_name(cfg: dict[str, Any]) -> str:
    """What the mixers build: ConvLM, or HyenaLM shaped like HyenaDNA-large-1m."""
    names = ["ConvLM"] if any(m != "hyenadna" for m in cfg["mixers"]) else []
    if "hyenadna" in cfg["mixers"]:
        names.append(
            "HyenaLM (mixer hyenadna: HyenaDNA-large-1m's order-2 Hyena, emb_dim 5, filter FFN 64 "
            "wide with 2 inner layers, filters on the 1M grid, MLP 4 x d_model)"
        )
    return " / ".join(names)


def table(report: dict[str, Any]) -> str:
    """Per mixer: decode tokens/s per P and method with speed-ups; prefill time and cache bytes."""
    rows, cfg = report["rows"], report["config"]
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
            common.grid(mine, ("P",), speed, pairs, "decode_s"),
            "",
            "Prefill of the P prompt tokens, and the bytes the cache holds:",
            "",
            common.grid(mine, ("P",), memory),
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
    lines += common.notes({**report, "ratios": []}, ("P",), checked=model.CHECKED)
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
    return plots.figures(
        report,
        out,
        f"{kind} d={cfg['d_model']}, {cfg['n_layers']} layers, B={cfg['batch']}",
        [
            plots.Plot(
                "context_tokens_per_s",
                plots.method_lines(rows, methods, "P", "tokens_per_s", **groups),
                "context length P (prompt tokens before decoding)",
                "decode tokens / s",
                f"Decode throughput at context P, K={k} new tokens",
            ),
            plots.Plot(
                "context_prefill_time",
                plots.method_lines(rows, methods, "P", "prefill_s", **groups),
                "context length P",
                "prefill time (s)",
                "Prefill time of P prompt tokens",
            ),
            plots.Plot(
                "context_cache_bytes",
                plots.method_lines(rows, cached, "P", "peak_cache_bytes", **groups),
                "context length P",
                "peak bytes held by the cache",
                f"Decoding cache at context P, K={k}",
            ),
        ],
    )
