"""``futurefill bench prompt``: a prompt of length P, then K generated steps (the paper's setting).

For every (P, K) of the grid and every engine method: ``prefill`` of the P prompt inputs at once
(timed), then K inputs fed one step at a time (timed in dyadic chunks), on a filter of length
P + K. Reported per cell: prefill time, decode time, time per generated token, the bytes the engine
holds after the prefill and at its peak. All P + K outputs are checked against the float64 offline
convolution.

Expected shapes (FutureFill paper, section 5): naive decodes in O(P K + K^2) and holds O(P + K);
continuous prefills in O(P log P), decodes in O(K log^2 K) and holds O(K), independent of P.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from futurefill.bench import common, plots
from futurefill.bench.layer import (
    ONLINE_METHODS,
    STEPPERS,
    conv_operands,
    time_steps,
)

RATIOS = (("naive", "epoched"), ("naive", "continuous"))


@dataclasses.dataclass
class PromptConfig:
    """Options of the prompt benchmark (the CLI flags have the same names)."""

    prompt_lens: tuple[int, ...] = (1024, 4096)
    gen_lens: tuple[int, ...] = (256, 1024, 4096)
    methods: tuple[str, ...] = ONLINE_METHODS
    channels: int = 128
    batch: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None  # None: every available core
    repeats: int = 3
    budget: float = 30.0  # seconds one prefill + decode may take (projected from smaller cells)
    warmup_len: int = 128  # every method runs once with P = K = warmup_len before the grid
    tol: float | None = None
    seed: int = 0
    out: Path = Path("results")
    progress: bool = True
    plots: bool = True


CONFIG = PromptConfig


def run_cell(
    method: str,
    operands: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    prompt_len: int,
    *,
    repeats: int,
    budget: float,
    tol: float,
    device: torch.device,
) -> dict[str, Any]:
    """Prefill ``u[..., :P]`` then step through the rest, up to ``repeats`` times; one row."""
    h, u, reference = operands
    batch, _, total_len = u.shape
    gen_len = total_len - prompt_len
    prompt = u[..., :prompt_len]
    inputs = u[..., prompt_len:].permute(2, 0, 1).contiguous()  # (K, B, D)

    def run_once() -> tuple[dict[str, Any], torch.Tensor]:
        engine = STEPPERS[method](h, total_len, batch)
        common.sync(device)
        began = time.perf_counter()
        y_prompt = engine.prefill(prompt)
        common.sync(device)
        prefill = time.perf_counter() - began
        after_prefill = engine.nbytes
        y_gen, chunks, peak, _ = time_steps(engine, inputs, device)
        decode = sum(c for _, _, c in chunks)
        record = {"seconds": prefill + decode, "prefill": prefill, "decode": decode}
        record.update(chunks=chunks, after_prefill=after_prefill, peak=max(peak, after_prefill))
        return record, torch.cat([y_prompt, y_gen], dim=-1)

    records, err = common.repeat_runs(
        run_once, lambda y: common.rel_err(y, reference), repeats, budget, tol
    )
    return {
        "method": method,
        "P": prompt_len,
        "K": gen_len,
        "status": common.status_of(err, tol),
        **common.prefill_decode_times(records, gen_len),
        "max_rel_err": err,
        "tol": tol,
        "chunks": common.median_chunks([r["chunks"] for r in records]),
    }


def peak_bytes(config: PromptConfig) -> int:
    """An upper estimate of the memory of the largest run (see :func:`layer.peak_bytes`)."""
    size = common.DTYPES[config.dtype].itemsize
    length = max(config.prompt_lens) + max(config.gen_lens)
    return config.batch * config.channels * length * (3 * size + 8 * 8)


def run(config: PromptConfig) -> dict[str, Any]:
    """Run the grid; the report (machine, config, rows, ratios, failures)."""
    unknown = [m for m in config.methods if m not in STEPPERS or m == "recompute"]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {ONLINE_METHODS}")
    if min(config.prompt_lens) < 1 or min(config.gen_lens) < 1:
        raise ValueError("prompt and generated lengths must be >= 1")
    dtype = common.DTYPES[config.dtype]
    device = common.resolve_device(config.device)
    tol = common.default_tol(dtype) if config.tol is None else config.tol
    # Cells from small to large total length, so budget projections come from smaller cells.
    grid = sorted(
        {(p, k) for p in config.prompt_lens for k in config.gen_lens}, key=lambda c: (sum(c), c)
    )
    cells = [common.Cell({"P": p, "K": k}, p + k, f"P={p}, K={k}") for p, k in grid]
    warm = config.warmup_len
    max_len = max(max(sum(c) for c in grid), 2 * warm)

    def measure(method, operands, cell, repeats, budget):
        p = cell.fields["P"]
        return run_cell(method, operands, p, repeats=repeats, budget=budget, tol=tol, device=device)

    machine, rows, gate = common.run_sweep(
        "prompt",
        config,
        tol=tol,
        device=device,
        groups=[None],
        cells=cells,
        warm=common.Cell({"P": warm, "K": warm}, 2 * warm, "warm-up"),
        measure=measure,
        **conv_operands(config, device, dtype, max_len),
    )
    return common.finish_report(
        "prompt",
        config,
        machine,
        device,
        rows,
        gate,
        tol,
        ("channels", "batch"),
        ratios=common.ratios_at_largest(rows, RATIOS, ("P", "K"), time_key="decode_s"),
    )


# ------------------------------------------------------------------------------ output


def table(report: dict[str, Any]) -> str:
    """Decode time (with ratios), prefill time and cache bytes per (P, K) and method."""
    rows = report["rows"]
    methods = list(report["config"]["methods"])
    pairs = [p for p in RATIOS if p[0] in methods and p[1] in methods]

    def grid(key: str, with_ratios: bool) -> str:
        fmt = common.fmt_bytes if key.endswith("bytes") else common.fmt_seconds
        columns = [(m, m, lambda r: fmt(r[key])) for m in methods]
        chosen = pairs if with_ratios else ()
        return common.markdown_table(*common.method_grid(rows, ("P", "K"), columns, chosen, key))

    cfg = report["config"]
    lines = [
        f"## Prompt benchmark: prefill P inputs, then decode K steps "
        f"(median of up to {cfg['repeats']} runs)",
        "",
        f"Machine: {common.machine_line(report['machine'])}",
        f"Layer: {cfg['channels']} channels, batch {cfg['batch']}, {cfg['dtype']}, "
        f"budget {cfg['budget']:g} s per run; cache = peak bytes held by the engine.",
        "",
        "Decode time (K steps):",
        "",
        grid("decode_s", with_ratios=True),
        "",
        "Prefill time (P inputs at once):",
        "",
        grid("prefill_s", with_ratios=False),
        "",
        "Peak bytes held by the engine:",
        "",
        grid("peak_cache_bytes", with_ratios=False),
        "",
    ]
    lines += common.notes(report, ("P", "K"), what="decode time")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = common.csv_columns(
    "method P K",
    "prefill_s decode_s total_s per_token_s cache_bytes_after_prefill peak_cache_bytes",
    setting="channels batch",
)


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    rows, methods = report["rows"], report["config"]["methods"]
    by_p = {"by": "P", "values": sorted({r["P"] for r in rows}), "label": "{method} P={value}"}
    by_k = {"by": "K", "values": sorted({r["K"] for r in rows}), "label": "{method} K={value}"}
    what = f"D={report['config']['channels']}, B={report['config']['batch']}"
    return plots.figures(
        report,
        out,
        what,
        [
            (
                "prompt_decode_time",
                plots.method_lines(rows, methods, "K", "decode_s", **by_p),
                "generated length K",
                "decode time (s)",
                "Decode time for K steps after a prompt of length P",
            ),
            (
                "prompt_prefill_time",
                plots.method_lines(rows, methods, "P", "prefill_s", **by_k),
                "prompt length P",
                "prefill time (s)",
                "Prefill time for a prompt of length P",
            ),
            (
                "prompt_cache_bytes",
                plots.method_lines(rows, methods, "K", "peak_cache_bytes", **by_p),
                "generated length K",
                "peak bytes held",
                "Engine memory after a prompt of length P",
            ),
        ],
    )
