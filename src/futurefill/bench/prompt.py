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
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from futurefill.bench import common, plots
from futurefill.bench.layer import (
    ONLINE_METHODS,
    STEPPERS,
    decaying_filter,
    random_inputs,
    time_steps,
)
from futurefill.fftconv import causal_conv

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
    h: torch.Tensor,
    u: torch.Tensor,
    reference: torch.Tensor,
    prompt_len: int,
    *,
    repeats: int,
    budget: float,
    tol: float,
    device: torch.device,
) -> dict[str, Any]:
    """Prefill ``u[..., :P]`` then step through the rest, up to ``repeats`` times; one row."""
    batch, _, total_len = u.shape
    gen_len = total_len - prompt_len
    prompt = u[..., :prompt_len]
    inputs = u[..., prompt_len:].permute(2, 0, 1).contiguous()  # (K, B, D)
    prefills, decodes, runs = [], [], []
    after_prefill = peak = 0
    err = None
    while common.should_repeat(
        [p + d for p, d in zip(prefills, decodes, strict=True)], repeats, budget
    ):
        engine = STEPPERS[method](h, total_len, batch)
        common.sync(device)
        began = time.perf_counter()
        y_prompt = engine.prefill(prompt)
        common.sync(device)
        prefills.append(time.perf_counter() - began)
        after_prefill = engine.nbytes
        y_gen, chunks, peak, _ = time_steps(engine, inputs, device)
        peak = max(peak, after_prefill)
        decodes.append(sum(c for _, _, c in chunks))
        runs.append(chunks)
        del engine
        if err is None:
            err = common.rel_err(torch.cat([y_prompt, y_gen], dim=-1), reference)
            if not err <= tol:
                break
    prefill, decode = common.median(prefills), common.median(decodes)
    ok = err <= tol
    return {
        "method": method,
        "P": prompt_len,
        "K": gen_len,
        "status": "ok" if ok else common.failed_status(err, tol),
        "prefill_s": prefill,
        "decode_s": decode,
        "total_s": prefill + decode,
        "per_token_s": decode / gen_len,
        "cache_bytes_after_prefill": after_prefill,
        "peak_cache_bytes": peak,
        "max_rel_err": err,
        "tol": tol,
        "repeats": len(decodes),
        "prefill_times_s": prefills,
        "decode_times_s": decodes,
        "chunks": [
            (a, b, common.median([r[i][2] for r in runs]) / (b - a))
            for i, (a, b, _) in enumerate(runs[0])
        ],
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
    device = common.resolve_device(config.device)
    dtype = common.DTYPES[config.dtype]
    tol = common.default_tol(dtype) if config.tol is None else config.tol
    # Cells from small to large total length, so budget projections come from smaller cells.
    cells = sorted(
        {(p, k) for p in config.prompt_lens for k in config.gen_lens}, key=lambda c: (sum(c), c)
    )
    max_len = max(max(sum(c) for c in cells), 2 * config.warmup_len)

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
            return h, u, causal_conv(u.to(torch.float64), h.to(torch.float64))

        warm = operands(2 * config.warmup_len)
        for method in config.methods:
            run_cell(
                method,
                *warm,
                config.warmup_len,
                repeats=1,
                budget=float("inf"),
                tol=tol,
                device=device,
            )

        rows: list[dict[str, Any]] = []
        gate = common.BudgetGate(config.budget)
        bar = tqdm(
            total=len(cells) * len(config.methods),
            desc="bench prompt",
            unit="run",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        with bar:
            for prompt_len, gen_len in cells:
                h, u, reference = operands(prompt_len + gen_len)
                worst = 0.0
                for method in config.methods:
                    bar.set_postfix_str(f"P={prompt_len} K={gen_len} {method}")
                    base = {"method": method, "P": prompt_len, "K": gen_len, "tol": tol}
                    blocked = gate.check(method, prompt_len + gen_len)
                    if blocked is not None:
                        row = {**base, **blocked}
                    else:
                        row = run_cell(
                            method,
                            h,
                            u,
                            reference,
                            prompt_len,
                            repeats=config.repeats,
                            budget=config.budget,
                            tol=tol,
                            device=device,
                        )
                        worst = max(worst, row["max_rel_err"])
                        gate.record(
                            method,
                            prompt_len + gen_len,
                            row,
                            what=method,
                            at=f"P={prompt_len}, K={gen_len}",
                            time_key="total_s",
                        )
                    rows.append(row)
                    bar.update(1)
                bar.write(
                    f"P={prompt_len}, K={gen_len}: largest relative difference from the float64 "
                    f"reference {worst:.2e} (tol {tol:.0e})"
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
    by = {(r["method"], r["P"], r["K"]): r for r in rows}
    cells = sorted({(r["P"], r["K"]) for r in rows})
    pairs = [p for p in RATIOS if p[0] in methods and p[1] in methods]

    def cell(r: dict[str, Any], key: str) -> str:
        if r["status"] != "ok":
            return r["status"].split(" ")[0]
        return common.fmt_bytes(r[key]) if key.endswith("bytes") else common.fmt_seconds(r[key])

    def grid(key: str, with_ratios: bool) -> str:
        header = ["P", "K", *methods]
        if with_ratios:
            header += [f"{a}/{b}" for a, b in pairs]
        body = []
        for p, k in cells:
            line = [str(p), str(k), *(cell(by[(m, p, k)], key) for m in methods)]
            if with_ratios:
                for a, b in pairs:
                    ra, rb = by[(a, p, k)], by[(b, p, k)]
                    both = ra["status"] == "ok" and rb["status"] == "ok"
                    line.append(common.fmt_ratio(ra[key], rb[key]) if both else "-")
            body.append(line)
        return common.markdown_table(header, body)

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
    for r in report["ratios"]:
        lines.append(
            f"- {r['numerator']}/{r['denominator']} decode time at the largest (P, K) both "
            f"reached (P={r['P']}, K={r['K']}): {r['ratio']:.2f}x"
        )
    for r in rows:
        if r["status"].startswith("skipped"):
            lines.append(f"- {r['method']} at P={r['P']}, K={r['K']}: {r['status']}")
    lines.append(
        f"- agreement: largest relative difference from the float64 reference "
        f"{report['max_rel_err']:.2e} (tol {report['tol']:.0e})"
        + ("" if not report["failures"] else f"; FAILED: {'; '.join(report['failures'])}")
    )
    return "\n".join(lines) + "\n"


CSV_COLUMNS = (
    "benchmark",
    "method",
    "P",
    "K",
    "status",
    "prefill_s",
    "decode_s",
    "total_s",
    "per_token_s",
    "cache_bytes_after_prefill",
    "peak_cache_bytes",
    "max_rel_err",
    "tol",
    "repeats",
    "channels",
    "batch",
    "dtype",
    "device",
    "threads",
)


def write_outputs(report: dict[str, Any], out: Path, make_plots: bool = True) -> list[Path]:
    """prompt.json, prompt.csv, prompt_table.md and the PNGs, in ``out``."""
    return common.write_report(
        out, "prompt", report, CSV_COLUMNS, table(report), plot if make_plots else None
    )


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    rows = [r for r in report["rows"] if r["status"] == "ok"]
    methods = report["config"]["methods"]
    prompt_lens = sorted({r["P"] for r in report["rows"]})
    gen_lens = sorted({r["K"] for r in report["rows"]})
    subtitle = common.machine_line(report["machine"])
    what = f"D={report['config']['channels']}, B={report['config']['batch']}"

    def series(x_key: str, y_key: str, fixed_key: str, fixed_values: list[int]):
        out = []
        for m in methods:
            for i, v in enumerate(fixed_values):
                pts = sorted(
                    (r[x_key], r[y_key]) for r in rows if r["method"] == m and r[fixed_key] == v
                )
                out.append(
                    {
                        "method": m,
                        "label": f"{m} {fixed_key}={v}",
                        "x": [x for x, _ in pts],
                        "y": [y for _, y in pts],
                        "linestyle": plots.LINESTYLES[i % len(plots.LINESTYLES)],
                    }
                )
        return out

    return [
        plots.loglog_lines(
            series("K", "decode_s", "P", prompt_lens),
            xlabel="generated length K",
            ylabel="decode time (s)",
            title=f"Decode time for K steps after a prompt of length P ({what})",
            subtitle=subtitle,
            path=out / "prompt_decode_time.png",
        ),
        plots.loglog_lines(
            series("P", "prefill_s", "K", gen_lens),
            xlabel="prompt length P",
            ylabel="prefill time (s)",
            title=f"Prefill time for a prompt of length P ({what})",
            subtitle=subtitle,
            path=out / "prompt_prefill_time.png",
        ),
        plots.loglog_lines(
            series("K", "peak_cache_bytes", "P", prompt_lens),
            xlabel="generated length K",
            ylabel="peak bytes held",
            title=f"Engine memory after a prompt of length P ({what})",
            subtitle=subtitle,
            path=out / "prompt_cache_bytes.png",
        ),
    ]
