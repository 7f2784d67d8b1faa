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

from futurefill.online import METHODS

# Every registered method a colour of its own, in registration order; its compiled variant the
# same colour, hollow; the baselines grey and black.
PALETTE = ("tab:red", "tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:brown")
MARKERS = ("o", "s", "^", "v", "D", "P")
BASELINES = {"recompute": ("tab:gray", "x"), "offline": ("black", ".")}


def style(name: str) -> tuple[str, str, str]:
    """``(colour, marker, marker face)`` of a bench method: a registered method, ``compiled``
    (continuous) or ``compiled-<method>``, ``recompute`` or ``offline``."""
    if name in BASELINES:
        return (*BASELINES[name], "full")
    method = "continuous" if name == "compiled" else name.removeprefix("compiled-")
    i = list(METHODS).index(method) if method in METHODS else len(METHODS)
    return (
        PALETTE[i % len(PALETTE)],
        MARKERS[i % len(MARKERS)],
        ("none" if name.startswith("compiled") else "full"),
    )


LINESTYLES = ("-", "--", ":", "-.")


# The axis label of each row field a plot draws.
AXES = {
    "L": "generated length L",
    "K": "generated length K",
    "P": "prompt length P (the context before decoding)",
    "total_s": "total time (s)",
    "decode_s": "decode time (s)",
    "prefill_s": "prefill time (s)",
    "tokens_per_s": "tokens / s",
    "peak_cache_bytes": "peak bytes held by the cache",
    "chunks": "time per token (s)",
    "trace": "time of one step (s)",
}


class Plot(NamedTuple):
    """One PNG, ``<name>.png``: per method (and per value of the row field ``by``) the ok rows'
    field ``y`` against ``x``, log-log. Two ``y`` are drawn from each method's run at the largest
    ``x`` instead: ``"chunks"``, the mean step time per dyadic chunk of positions (a run not
    stepped, one chunk, is a dashed level), and ``"trace"``, the largest step (solid) and the
    median step (dotted) per bucket of positions."""

    name: str
    x: str
    y: str
    title: str
    by: str | None = None

    @property
    def xlabel(self) -> str:
        if self.y == "chunks":
            return "position t (mean over dyadic chunks)"
        return f"position t (buckets of {self.x}/256 steps)" if self.y == "trace" else AXES[self.x]


def per_position(name: str, size: str, by: str | None = None) -> Plot:
    return Plot(
        name, size, "chunks", f"Time per token against position, at the largest {size} run", by
    )


def step_latency(name: str, size: str, by: str | None = None) -> Plot:
    return Plot(
        name, size, "trace", f"Step latency against position, at the largest {size} run", by
    )


def cache_bytes(name: str, x: str, title: str, by: str | None = None) -> Plot:
    return Plot(name, x, "peak_cache_bytes", title, by)


def prefill_time(name: str, by: str) -> Plot:
    return Plot(name, "P", "prefill_s", "Prefill time of a prompt of P tokens", by)


def lines(plot: Plot, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The lines of ``plot``: dicts with ``x``, ``y``, ``label``, ``method``, ``linestyle``."""
    rows = [r for r in report["rows"] if r["status"] == "ok" and r.get(plot.y) is not None]
    values = sorted({r[plot.by] for r in rows}) if plot.by else [None]
    slopes = report.get("slopes", {}) if plot.y == "total_s" else {}  # slopes of total time
    prefix = "" if plot.by == "mixer" else f"{plot.by}="
    out = []
    for i, value in enumerate(values):
        for method in report["config"]["methods"]:
            mine = [r for r in rows if r["method"] == method and r.get(plot.by) == value]
            if not mine:
                continue
            mine.sort(key=lambda r: r[plot.x])
            name = method if value is None else f"{method} {prefix}{value}"
            style = {"method": method, "linestyle": LINESTYLES[i % 4]}
            if plot.y in ("chunks", "trace"):
                out += _at_largest(plot, mine[-1], name, style)
                continue
            slope = (slopes.get(value, {}) if plot.by else slopes).get(method, {}).get("all")
            name += "" if slope is None else f" (slope {slope:.2f})"
            out.append(_line(style, name, [r[plot.x] for r in mine], [r[plot.y] for r in mine]))
    return out


def _line(style: dict[str, Any], label: str, x: list, y: list, **more: Any) -> dict[str, Any]:
    return style | {"label": label, "x": x, "y": y} | more


def _at_largest(
    plot: Plot, last: dict[str, Any], name: str, style: dict[str, Any]
) -> list[dict[str, Any]]:
    at = f" ({plot.x}={last[plot.x]})"
    if plot.y == "trace":
        x = [a for a, _, _ in last["trace"]]
        top, middle = [t for _, t, _ in last["trace"]], [m for _, _, m in last["trace"]]
        return [
            _line(style, f"{name}: largest step per bucket{at}", x, top),
            _line(style, f"{name}: median step per bucket", x, middle, linestyle=":"),
        ]
    chunks = last["chunks"]
    if len(chunks) == 1:  # not stepped (offline): its time per token as a dashed level
        ((a, b, s),) = chunks
        return [_line(style, name + at, [max(a, 1), b], [s, s], linestyle="--")]
    return [_line(style, name + at, [(a + b) / 2 for a, b, _ in chunks], [s for *_, s in chunks])]


def figures(
    report: dict[str, Any], out: Path, what: str, machine: str, specs: Sequence[Plot]
) -> list[Path]:
    """One PNG per plot that has a point: its title formatted with the config, ``what`` beside
    it, ``machine`` below."""
    written = []
    for plot in specs:
        if drawn := lines(plot, report):
            title = f"{plot.title.format(**report['config'])} ({what})\n{machine}"
            written.append(draw(plot, drawn, title, out / f"{plot.name}.png"))
    return written


def draw(plot: Plot, drawn: list[dict[str, Any]], title: str, path: Path) -> Path:
    fig = Figure(figsize=(7, 4.8))
    ax = fig.add_subplot()
    for s in drawn:
        color, marker, fill = style(s["method"])
        ax.plot(
            s["x"],
            s["y"],
            color=color,
            marker=marker,
            fillstyle=fill,
            label=s["label"],
            linestyle=s["linestyle"],
            markersize=4,
        )
    if plot.y != "trace":
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel=plot.xlabel, ylabel=AXES[plot.y])
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
