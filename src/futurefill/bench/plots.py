"""Matplotlib figures of the benchmark results.

Figures are built with :class:`matplotlib.figure.Figure` directly and saved by the Agg renderer, so
no display is needed and pyplot's global backend is left alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

# One colour and marker per method, the same in every figure.
STYLE = {
    "naive": ("tab:red", "o"),
    "epoched": ("tab:orange", "s"),
    "continuous": ("tab:blue", "^"),
    "deamortized": ("tab:green", "v"),
    "compiled": ("tab:cyan", "P"),
    "recompute": ("tab:gray", "x"),
    "offline": ("black", "."),
}
LINESTYLES = ("-", "--", ":", "-.")


def style(method: str) -> tuple[str, str]:
    return STYLE.get(method, ("tab:purple", "d"))


def _finish(fig: Figure, ax: Axes, title: str, subtitle: str, path: Path) -> Path:
    ax.set_title(f"{title}\n{subtitle}", fontsize=9)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.1)
    if len(ax.get_legend_handles_labels()[1]) > 6:  # many lines: the legend beside the axes
        fig.set_size_inches(10, 4.8)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def loglog_lines(
    series: Sequence[dict[str, Any]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    subtitle: str,
    path: Path,
    logy: bool = True,
    logx: bool = True,
) -> Path:
    """One line per entry of ``series``: dicts with x, y, label, method and optional linestyle."""
    fig = Figure(figsize=(7, 4.8))
    ax = fig.add_subplot()
    for s in series:
        if not s["x"]:
            continue
        color, marker = style(s["method"])
        ax.plot(
            s["x"],
            s["y"],
            color=color,
            marker=marker,
            linestyle=s.get("linestyle", "-"),
            label=s["label"],
            markersize=4,
        )
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _finish(fig, ax, title, subtitle, path)


def _ok_rows(rows: Sequence[dict[str, Any]], method: str, where: dict[str, Any], x: str) -> list:
    return sorted(
        (
            r
            for r in rows
            if r["method"] == method
            and r["status"] == "ok"
            and all(r.get(k) == v for k, v in where.items())
        ),
        key=lambda r: r[x],
    )


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
    for i, value in enumerate(values):
        where = {} if by is None else {by: value}
        for method in methods:
            done = _ok_rows(rows, method, where, x)
            lines.append(
                {
                    "method": method,
                    "label": label.format(method=method, value=value),
                    "linestyle": LINESTYLES[i % len(LINESTYLES)],
                    "x": [r[x] for r in done],
                    "y": [r[y] for r in done],
                }
            )
    return lines


def _largest_runs(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    size: str,
    by: str | None,
    values: Sequence[Any],
    field: str,
) -> Iterator[tuple[int, Any, str, dict[str, Any]]]:
    """(index of the value, value, method, row) of each method's largest ok run having
    ``field``, per value of ``by``."""
    for i, value in enumerate(values):
        where = {} if by is None else {by: value}
        for method in methods:
            done = [r for r in _ok_rows(rows, method, where, size) if field in r]
            if done:
                yield i, value, method, done[-1]


def chunk_lines(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    size: str,
    *,
    by: str | None = None,
    values: Sequence[Any] = (None,),
    label: str = "{method}",
) -> list[dict[str, Any]]:
    """Mean step time per dyadic chunk of positions at each method's largest ok run."""
    return [
        {
            "method": method,
            "label": label.format(method=method, value=value) + f" ({size}={last[size]})",
            "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "x": [(a + b) / 2 for a, b, _ in last["chunks"]],
            "y": [s for _, _, s in last["chunks"]],
        }
        for i, value, method, last in _largest_runs(rows, methods, size, by, values, "chunks")
    ]


def latency_lines(
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    size: str,
    *,
    by: str | None = None,
    values: Sequence[Any] = (None,),
    label: str = "{method}",
) -> list[dict[str, Any]]:
    """The largest step (solid) and the median step (dotted) per bucket of positions, at each
    method's largest ok run with a latency trace."""
    lines = []
    for _, value, method, last in _largest_runs(rows, methods, size, by, values, "trace"):
        at = [a for a, _, _ in last["trace"]]
        name = label.format(method=method, value=value)
        lines += [
            {
                "method": method,
                "label": f"{name}: largest step per bucket ({size}={last[size]})",
                "x": at,
                "y": [top for _, top, _ in last["trace"]],
            },
            {
                "method": method,
                "label": f"{name}: median step per bucket",
                "x": at,
                "y": [mid for _, _, mid in last["trace"]],
                "linestyle": ":",
            },
        ]
    return lines


def figures(report: dict[str, Any], out: Path, what: str, specs: Sequence[tuple]) -> list[Path]:
    """One PNG per ``(name, lines, xlabel, ylabel, title[, options])`` in ``specs``; the title
    gets ``what`` in parentheses, the subtitle names the machine."""
    from futurefill.bench.common import machine_line

    subtitle = machine_line(report["machine"])
    return [
        loglog_lines(
            lines,
            xlabel=xlabel,
            ylabel=ylabel,
            title=f"{title} ({what})",
            subtitle=subtitle,
            path=out / f"{name}.png",
            **(options[0] if options else {}),
        )
        for name, lines, xlabel, ylabel, title, *options in specs
    ]
