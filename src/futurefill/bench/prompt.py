"""``futurefill bench prompt``: a prompt of length P, then K generated steps (the paper's setting).

For every (P, K) of the grid and every engine method: ``prefill`` of the P prompt inputs at once
(timed), then K inputs fed one step at a time (timed), on a filter of length P + K
(:func:`futurefill.bench.layer.measure`). Reported per cell: prefill time, decode time, time per
generated token, the bytes the engine holds after the prefill and at its peak. All P + K outputs
are checked against the float64 offline convolution.

Expected shapes (FutureFill paper, section 5): naive decodes in O(P K + K^2) and holds O(P + K);
continuous prefills in O(P log P), decodes in O(K log^2 K) and holds O(K), independent of P.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from futurefill.bench import common, layer, plots
from futurefill.bench.common import LENGTH, SIZE, option

RATIOS = (("naive", "epoched"), ("naive", "continuous"))
METHODS = layer.ONLINE_METHODS


@dataclasses.dataclass
class PromptConfig(common.Options):
    """Options of the prompt benchmark (the CLI flags have the same names)."""

    prompt_lens: tuple[int, ...] = option((1024, 4096), "prompt lengths P", type=LENGTH, nargs="+")
    gen_lens: tuple[int, ...] = option(
        (256, 1024, 4096), "generated lengths K", type=LENGTH, nargs="+"
    )
    methods: tuple[str, ...] = option(METHODS, "methods", choices=METHODS, nargs="+")
    channels: int = option(128, "channels D", type=SIZE)
    batch: int = option(1, "batch size B", type=SIZE)
    warmup_len: int = option(128, "P and K of every method's warm-up run", type=LENGTH)

    @property
    def longest(self) -> int:
        return max(self.prompt_lens) + max(self.gen_lens)


CONFIG = PromptConfig


peak_bytes = layer.peak_bytes


def run(config: PromptConfig) -> dict[str, Any]:
    """Run the grid; the report (machine, config, rows, ratios, failures)."""
    # Cells from small to large total length, so budget projections come from smaller cells.
    grid = sorted(
        {(p, k) for p in config.prompt_lens for k in config.gen_lens}, key=lambda c: (sum(c), c)
    )
    warm = config.warmup_len

    def measure(method, operands, cell, setting) -> dict[str, Any]:
        row = layer.measure(method, operands, cell, setting)
        return row | {"per_token_s": row["decode_s"] / cell.fields["K"]}

    report = common.sweep(
        "prompt",
        config,
        tols=common.DEFAULT_TOL,
        groups=[None],
        cells=[common.Cell({"P": p, "K": k}, p + k, f"P={p}, K={k}") for p, k in grid],
        warm=common.Cell({"P": warm, "K": warm}, 2 * warm, "warm-up"),
        measure=measure,
        row_fields=("channels", "batch"),
        operands=layer.open_conv(config, max(config.longest, 2 * warm)),
    )
    report["ratios"] = common.ratios_at_largest(report["rows"], RATIOS, ("P", "K"), "decode_s")
    return report


# ------------------------------------------------------------------------------ output


def table(report: dict[str, Any]) -> str:
    """Decode time (with ratios), prefill time and cache bytes per (P, K) and method."""
    rows, cfg = report["rows"], report["config"]
    methods = list(cfg["methods"])
    pairs = [p for p in RATIOS if p[0] in methods and p[1] in methods]

    def grid(key: str, with_ratios: bool) -> str:
        fmt = common.fmt_bytes if key.endswith("bytes") else common.fmt_seconds
        columns = [(m, m, lambda r: fmt(r[key])) for m in methods]
        return common.grid(rows, ("P", "K"), columns, pairs if with_ratios else (), key)

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
        *common.notes(report, ("P", "K"), what="decode time"),
    ]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = common.csv_columns(
    "method P K",
    "prefill_s decode_s total_s per_token_s cache_bytes_after_prefill peak_cache_bytes",
    setting="channels batch",
)


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    rows, cfg = report["rows"], report["config"]
    methods = cfg["methods"]
    by_p = {"by": "P", "values": sorted({r["P"] for r in rows}), "label": "{method} P={value}"}
    by_k = {"by": "K", "values": sorted({r["K"] for r in rows}), "label": "{method} K={value}"}
    return plots.figures(
        report,
        out,
        f"D={cfg['channels']}, B={cfg['batch']}",
        [
            plots.Plot(
                "prompt_decode_time",
                plots.method_lines(rows, methods, "K", "decode_s", **by_p),
                "generated length K",
                "decode time (s)",
                "Decode time for K steps after a prompt of length P",
            ),
            plots.Plot(
                "prompt_prefill_time",
                plots.method_lines(rows, methods, "P", "prefill_s", **by_k),
                "prompt length P",
                "prefill time (s)",
                "Prefill time for a prompt of length P",
            ),
            plots.Plot(
                "prompt_cache_bytes",
                plots.method_lines(rows, methods, "K", "peak_cache_bytes", **by_p),
                "generated length K",
                "peak bytes held",
                "Engine memory after a prompt of length P",
            ),
        ],
    )
