"""Matplotlib figures of the benchmark results.

Figures are built with :class:`matplotlib.figure.Figure` directly and saved by the Agg renderer, so
no display is needed and pyplot's global backend is left alone. A line is a dict with ``x``,
``y``, ``label``, ``method`` (its colour and marker) and optionally ``linestyle``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.figure import Figure

# One colour and marker per method, the same in every figure.
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
    """One PNG: ``<name>.png``, its lines, axis labels and title; log-log unless told."""

    name: str
    lines: list[dict[str, Any]]
    xlabel: str
    ylabel: str
    title: str
    logx: bool = True


def draw(plot: Plot, title: str, subtitle: str, path: Path) -> Path:
    fig = Figure(figsize=(7, 4.8))
    ax = fig.add_subplot()
    for s in plot.lines:
        if s["x"]:
            color, marker = STYLE.get(s["method"], ("tab:purple", "d"))
            style = {"linestyle": s.get("linestyle", "-"), "markersize": 4}
            ax.plot(s["x"], s["y"], color=color, marker=marker, label=s["label"], **style)
    if plot.logx:
        ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel=plot.xlabel, ylabel=plot.ylabel)
    ax.set_title(f"{title}\n{subtitle}", fontsize=9)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.1)
    if len(ax.get_legend_handles_labels()[1]) > 6:  # many lines: the legend beside the axes
        fig.set_size_inches(10, 4.8)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def figures(report: dict[str, Any], out: Path, what: str, specs: Sequence[Plot]) -> list[Path]:
    """One PNG per plot that has a point; the title gets ``what`` in parentheses, the subtitle
    names the machine."""
    from futurefill.bench.common import machine_line

    subtitle = machine_line(report["machine"])
    return [
        draw(p, f"{p.title} ({what})", subtitle, out / f"{p.name}.png")
        for p in specs
        if any(line["x"] for line in p.lines)
    ]


def _series(
    rows: Sequence[dict[str, Any]], methods: Sequence[str], by: str | None, values: Sequence[Any]
) -> Iterator[tuple[int, Any, str, list[dict[str, Any]]]]:
    """(index of the value, value, method, its ok rows) per value of ``by`` and method."""
    for i, value in enumerate(values):
        for method in methods:
            done = [
                r
                for r in rows
                if r["method"] == method and r["status"] == "ok" and (by is None or r[by] == value)
            ]
            yield i, value, method, done


def method_lines(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    x: str,
    y: str,
    *,
    by: str | None = None,
    values: Sequence[Any] = (None,),
    label: str = "{method}",
) -> list[dict[str, Any]]:
    """One line per method (and per value of the row field ``by``, one line style each): the
    ok rows' ``y`` against ``x``. ``label`` is formatted with ``method`` and ``value``."""
    lines = []
    for i, value, method, done in _series(rows, methods, by, values):
        done = sorted(done, key=lambda r: r[x])
        lines.append(
            {"method": method, "label": label.format(method=method, value=value)}
            | {"linestyle": LINESTYLES[i % 4], "x": [r[x] for r in done], "y": [r[y] for r in done]}
        )
    return lines


def _largest(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    size: str,
    field: str,
    by: str | None,
    values: Sequence[Any],
) -> Iterator[tuple[int, Any, str, dict[str, Any]]]:
    """(index of the value, value, method, row) of each method's largest ok run having
    ``field``, per value of ``by``."""
    for i, value, method, done in _series(rows, methods, by, values):
        if done := [r for r in done if field in r]:
            yield i, value, method, max(done, key=lambda r: r[size])


def per_position(
    name: str,
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    size: str,
    *,
    by: str | None = None,
    values: Sequence[Any] = (None,),
    label: str = "{method}",
) -> Plot:
    """Mean step time per dyadic chunk of positions at each method's largest ok run."""
    lines = [
        {"method": method, "linestyle": LINESTYLES[i % 4]}
        | {"label": label.format(method=method, value=value) + f" ({size}={last[size]})"}
        | {"x": [(a + b) / 2 for a, b, _ in last["chunks"]], "y": [s for _, _, s in last["chunks"]]}
        for i, value, method, last in _largest(rows, methods, size, "chunks", by, values)
    ]
    title = f"Time per token against position, at the largest {size} run"
    return Plot(name, lines, "position t (mean over dyadic chunks)", "time per token (s)", title)


def step_latency(
    name: str,
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    size: str,
    *,
    by: str | None = None,
    values: Sequence[Any] = (None,),
    label: str = "{method}",
) -> Plot:
    """The largest step (solid) and the median step (dotted) per bucket of positions, at each
    method's largest ok run with a latency trace."""
    lines = []
    for _, value, method, last in _largest(rows, methods, size, "trace", by, values):
        at, series = [a for a, _, _ in last["trace"]], label.format(method=method, value=value)
        lines += [
            {"method": method, "x": at, "y": [top for _, top, _ in last["trace"]]}
            | {"label": f"{series}: largest step per bucket ({size}={last[size]})"},
            {"method": method, "x": at, "y": [mid for _, _, mid in last["trace"]]}
            | {"label": f"{series}: median step per bucket", "linestyle": ":"},
        ]
    title = f"Step latency against position, at the largest {size} run"
    xlabel = f"position t (buckets of {size}/256 steps)"
    return Plot(name, lines, xlabel, "time of one step (s)", title, logx=False)
