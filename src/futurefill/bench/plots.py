"""Matplotlib figures of the benchmark results, from :class:`Plot` descriptions.

Figures are built with :class:`matplotlib.figure.Figure` directly and saved by the Agg renderer, so
no display is needed and pyplot's global backend is left alone. Each method has one colour and
marker in every figure; each value of a plot's ``by`` field one line style.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.figure import Figure

STYLE = {
    "naive": ("tab:red", "o"),
    "epoched": ("tab:orange", "s"),
    "continuous": ("tab:blue", "^"),
    "deamortized": ("tab:green", "v"),
    "compiled": ("tab:cyan", "P"),
    "compiled-deamortized": ("tab:olive", "<"),
    "recompute": ("tab:gray", "x"),
    "offline": ("black", "."),
}
LINESTYLES = ("-", "--", ":", "-.")


class Plot(NamedTuple):
    """One PNG, ``<name>.png``: per method (and per value of the row field ``by``) the ok rows'
    field ``y`` against ``x``, log-log. Two ``y`` are drawn from each method's run at the largest
    ``x`` instead: ``"chunks"``, the mean step time per dyadic chunk of positions (a run not
    stepped, one chunk, is a dashed level), and ``"trace"``, the largest step (solid) and the
    median step (dotted) per bucket of positions."""

    name: str
    x: str
    y: str
    xlabel: str
    ylabel: str
    title: str
    by: str | None = None


def per_position(name: str, size: str, by: str | None = None) -> Plot:
    title = f"Time per token against position, at the largest {size} run"
    xlabel = "position t (mean over dyadic chunks)"
    return Plot(name, size, "chunks", xlabel, "time per token (s)", title, by)


def step_latency(name: str, size: str, by: str | None = None) -> Plot:
    title = f"Step latency against position, at the largest {size} run"
    xlabel = f"position t (buckets of {size}/256 steps)"
    return Plot(name, size, "trace", xlabel, "time of one step (s)", title, by)


def lines(plot: Plot, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The lines of ``plot``: dicts with ``x``, ``y``, ``label``, ``method``, ``linestyle``."""
    rows, fitted, out = [r for r in report["rows"] if r["status"] == "ok"], report.get("slopes"), []
    values = sorted({r[plot.by] for r in rows}) if plot.by else [None]
    for i, value in enumerate(values):
        for method in report["config"]["methods"]:
            mine = [r for r in rows if r["method"] == method and r.get(plot.y) is not None]
            mine = sorted(
                (r for r in mine if plot.by is None or r[plot.by] == value), key=lambda r: r[plot.x]
            )
            if not mine:
                continue
            name = (
                method
                if plot.by is None
                else f"{method} {value}"
                if plot.by == "mixer"
                else f"{method} {plot.by}={value}"
            )
            style = {"method": method, "linestyle": LINESTYLES[i % 4]}
            if plot.y in ("chunks", "trace"):
                out += _at_largest(plot, mine[-1], name, style)
                continue
            slope = (fitted or {}).get(value, {}) if plot.by == "mixer" else (fitted or {})
            slope = slope.get(method, {}).get("all") if plot.y == "total_s" else None
            name += "" if slope is None else f" (slope {slope:.2f})"
            out.append(
                style
                | {"label": name, "x": [r[plot.x] for r in mine], "y": [r[plot.y] for r in mine]}
            )
    return out


def _at_largest(
    plot: Plot, last: dict[str, Any], name: str, style: dict[str, Any]
) -> list[dict[str, Any]]:
    at = f" ({plot.x}={last[plot.x]})"
    if plot.y == "trace":
        x = [a for a, _, _ in last["trace"]]
        return [
            style
            | {
                "label": f"{name}: largest step per bucket{at}",
                "x": x,
                "y": [t for _, t, _ in last["trace"]],
            },
            style
            | {
                "label": f"{name}: median step per bucket",
                "x": x,
                "y": [m for _, _, m in last["trace"]],
                "linestyle": ":",
            },
        ]
    chunks = last["chunks"]
    if len(chunks) == 1:  # not stepped (offline): its time per token as a dashed level
        ((a, b, s),) = chunks
        return [style | {"label": name + at, "x": [max(a, 1), b], "y": [s, s], "linestyle": "--"}]
    x, y = [(a + b) / 2 for a, b, _ in chunks], [s for _, _, s in chunks]
    return [style | {"label": name + at, "x": x, "y": y}]


def figures(
    report: dict[str, Any], out: Path, what: str, machine: str, specs: Sequence[Plot]
) -> list[Path]:
    """One PNG per plot that has a point; ``what`` goes into the title, ``machine`` below it."""
    written = []
    for plot in specs:
        if drawn := lines(plot, report):
            written.append(
                draw(plot, drawn, f"{plot.title} ({what})\n{machine}", out / f"{plot.name}.png")
            )
    return written


def draw(plot: Plot, drawn: list[dict[str, Any]], title: str, path: Path) -> Path:
    fig = Figure(figsize=(7, 4.8))
    ax = fig.add_subplot()
    for s in drawn:
        color, marker = STYLE.get(s["method"], ("tab:purple", "d"))
        ax.plot(
            s["x"],
            s["y"],
            color=color,
            marker=marker,
            label=s["label"],
            linestyle=s["linestyle"],
            markersize=4,
        )
    if plot.y != "trace":
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel=plot.xlabel, ylabel=plot.ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.1)
    if len(drawn) > 6:  # many lines: the legend beside the axes
        fig.set_size_inches(10, 4.8)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
