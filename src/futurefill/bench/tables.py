"""The tables of a report: Markdown pipe tables of methods against sizes, and their notes.

A benchmark's report is a list of :class:`Section` tables (:func:`table`): a line per size, a
column per method (:func:`method_grid`, :func:`markdown_table`), ratio columns and fitted slopes;
under them the ratios, budget skips and the agreement check (:func:`notes`). The cells are
formatted by :func:`fmt_seconds`, :func:`fmt_bytes`, :func:`latency_cell`,
:func:`device_latency_cell`, :func:`seconds_of` and :func:`cache_cell`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from futurefill.bench.machine import machine_line
from futurefill.bench.runs import Row

if TYPE_CHECKING:
    from futurefill.bench.common import Benchmark


@dataclasses.dataclass(frozen=True)
class Section:
    """One table of a report: a line per size, a column per method holding ``key`` (a method
    with an ok row lacking it is left out), ``cell(row)`` for an ok row; with ``ratios`` the
    benchmark's ratio pairs, with ``slopes`` a row of fitted slopes."""

    caption: str
    column: str  # a column's header, "{m}" standing for the method
    key: str
    cell: Callable[[Row], str]
    ratios: bool = False
    slopes: bool = False


def table(bench: Benchmark, report: dict[str, Any]) -> str:
    """The terminal/Markdown summary: a heading, the machine, the setting, each section's table
    (per mixer where the benchmark has mixers), then the ratios, skips and agreement."""
    cfg = report["config"]
    pairs = [p for p in bench.ratios if p[0] in cfg["methods"] and p[1] in cfg["methods"]]
    lines = [
        f"## {bench.title.format(**cfg)} (median of up to {cfg['repeats']} runs)",
        "",
        f"Machine: {machine_line(report['machine'])}",
        bench.setting.format(**cfg),
        "",
    ]
    for group in cfg.get("mixers", (None,)):
        lines += [] if group is None else [f"### mixer {group}", ""]
        for section in bench.sections:
            lines += _section(bench, section, report, group, pairs)
    lines += notes(report, bench.sizes, what=bench.ratio_what, checked=bench.checked)
    lines += bench.notes(report) if bench.notes else []
    return "\n".join(lines) + "\n"


def _section(
    bench: Benchmark,
    section: Section,
    report: dict[str, Any],
    group: str | None,
    pairs: Sequence[tuple[str, str]],
) -> list[str]:
    """The lines of one section of ``group``'s rows: its caption and its table."""
    cfg, pairs = report["config"], pairs if section.ratios else ()
    mine = [r for r in report["rows"] if r.get("mixer") == group]
    ok = [r for r in mine if r["status"] == "ok"]
    shown = [
        m
        for m in cfg["methods"]
        if all(r.get(section.key) is not None for r in ok if r["method"] == m)
    ]
    columns = [(section.column.format(m=m), m, section.cell) for m in shown]
    header, body = method_grid(mine, bench.sizes, columns, pairs, bench.ratio_key)
    fitted = report.get("slopes", {}) if section.slopes else {}
    fitted = fitted if group is None else fitted.get(group, {})
    for name, key in (("slope", "all"), (f"slope L>={cfg.get('slope_from')}", "tail")):
        if fitted and (key == "all" or cfg.get("slope_from") is not None):
            values = [fitted[m].get(key) for m in shown]
            values = ["-" if v is None else f"{v:.2f}" for v in values]
            body.append([name, *values, *[""] * len(pairs)])  # slopes come with sizes ("L",)
    idle = idle_line(report["machine"])
    caption = [section.caption.format(idle=idle), ""] if section.caption else []
    return [*caption, markdown_table(header, body), ""]


def notes(
    report: dict[str, Any], size_keys: Sequence[str], *, what: str = "time", checked: str
) -> list[str]:
    """The bullet lines under a table: each ratio at the largest size both methods reached,
    each budget skip, and the agreement check."""

    def at(r: Row) -> str:
        return ", ".join(f"{k}={r[k]}" for k in size_keys)

    def who(r: Row) -> str:
        return f"{r['mixer']}: " if "mixer" in r else ""

    lines = [
        f"- {who(r)}{r['numerator']}/{r['denominator']} {what} at the largest size both reached "
        f"({at(r)}): {r['ratio']:.2f}x"
        for r in report["ratios"]
    ]
    lines += [
        f"- {who(r)}{r['method']} at {at(r)}: {r['status']}"
        for r in report["rows"]
        if r["status"].startswith("skipped")
    ]
    failed = "; ".join(report["failures"])
    lines.append(
        f"- agreement: largest relative difference {checked} {report['max_rel_err']:.2e} "
        f"(tol {report['tol']:.0e})" + (f"; FAILED: {failed}" if failed else "")
    )
    return lines


Column = tuple[str, str, Callable[[Row], str]]  # header, method, format of an ok row


def method_grid(
    rows: Sequence[Row],
    keys: Sequence[str],
    columns: Sequence[Column],
    pairs: Sequence[tuple[str, str]] = (),
    ratio_key: str = "total_s",
) -> tuple[list[str], list[list[str]]]:
    """Header and body of a table with a line per value of the rows' ``keys``: per column the
    formatted row of its method (the first word of its status when not ok), then for each pair
    ``a/b`` the ratio of their ``ratio_key`` where both are ok."""
    by = {(r["method"], *(r[k] for k in keys)): r for r in rows}
    header = [*keys, *(name for name, _, _ in columns), *(f"{a}/{b}" for a, b in pairs)]
    body = []
    for size in sorted({tuple(r[k] for k in keys) for r in rows}):
        line = [str(v) for v in size]
        for _, method, fmt in columns:
            r = by[(method, *size)]
            line.append(fmt(r) if r["status"] == "ok" else r["status"].split(" ")[0])
        for a, b in pairs:
            ra, rb = by[(a, *size)], by[(b, *size)]
            both = ra["status"] == "ok" and rb["status"] == "ok"
            line.append(f"{ra[ratio_key] / rb[ratio_key]:.2f}x" if both else "-")
        body.append(line)
    return header, body


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table, padded so it reads on a terminal and renders in Markdown."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    )


def latency_cell(row: Row) -> str:
    """A table cell: median / p99.9 / max step time (and max over median)."""
    times = (row["step_median_s"], row["step_p999_s"], row["step_max_s"])
    spread = row["step_max_s"] / row["step_median_s"]
    return " / ".join(fmt_seconds(t) for t in times) + f" ({spread:.0f}x)"


def device_latency_cell(row: Row) -> str:
    """A table cell: the device time of a step, p50 / p99 / p99.9."""
    keys = ("device_step_p50_s", "device_step_p99_s", "device_step_p999_s")
    return " / ".join(fmt_seconds(row[k]) for k in keys)


def seconds_of(key: str) -> Callable[[Row], str]:
    """A table cell: the row's ``key``, a time in seconds."""
    return lambda row: fmt_seconds(row[key])


def cache_cell(row: Row) -> str:
    """A table cell: the peak bytes the method's cache held."""
    return fmt_bytes(row["peak_cache_bytes"])


def idle_line(machine: dict[str, Any]) -> str:
    """A sentence on the idle step floor of the machine record, for a latency table."""
    idle = machine["idle_step"]
    return (
        f"An idle step on this machine (one small op, {idle['steps']} steps timed the same way): "
        f"{latency_cell(idle)}."
    )


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.0f} s" if seconds >= 100 else f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} µs"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n} B"
    exponent = min(3, (n.bit_length() - 1) // 10)
    return f"{n / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"
