"""Scaling and the budget: which cells of a sweep run, and how time grows with size.

:func:`project_time` projects a series' time at the next size from what it measured;
:class:`BudgetGate` skips a cell whose projection exceeds the budget (and every larger one) and
stops a series whose agreement check failed. After the sweep, :func:`ratios_at_largest` compares
method pairs at the largest size both reached and :func:`slopes` fits the log-log growth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def fit_slope(sizes: Sequence[float], times: Sequence[float]) -> float | None:
    """Least-squares slope of log(time) against log(size); None with fewer than two sizes."""
    pairs = [(s, t) for s, t in zip(sizes, times, strict=True) if s > 0 and t and t > 0]
    if len({s for s, _ in pairs}) < 2:
        return None
    return float(np.polyfit(np.log([s for s, _ in pairs]), np.log([t for _, t in pairs]), 1)[0])


def project_time(sizes: Sequence[float], times: Sequence[float], size: float) -> float | None:
    """Projected time at ``size`` from the measured (size, time) points, conservatively: from the
    largest point with the growth exponent of the last two, clamped to [1, 3] (small sizes are
    per-step overhead, exponent about 1: the clamp keeps a flat start from being trusted); with
    a single point, exponent 2 (the worst of the online methods), erring towards skipping."""
    if not sizes:
        return None
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    last, exponent = order[-1], 2.0
    if len(order) >= 2:
        prev = order[-2]
        if sizes[prev] < sizes[last] and times[prev] > 0 and times[last] > 0:
            local = math.log(times[last] / times[prev]) / math.log(sizes[last] / sizes[prev])
            exponent = min(3.0, max(1.0, local))
    return float(times[last] * (size / sizes[last]) ** exponent)


class BudgetGate:
    """Which cells of a sweep run. Each series (``key``: a method, or a (mixer, method) pair)
    visits sizes in increasing order: :meth:`check` before a cell says whether to run it;
    :meth:`record` after it feeds the cell's time to later projections, or, when its agreement
    check failed, stops the series and collects the failure in :attr:`failures`."""

    def __init__(self, budget: float):
        self.budget = budget
        self.failures: list[str] = []
        self._measured: dict[Any, tuple[list[float], list[float]]] = {}
        self._stopped: dict[Any, str] = {}

    def check(self, key: Any, size: float) -> dict[str, Any] | None:
        """None to run the cell; else the fields of its row (status, repeats 0, projected_s)."""
        if key in self._stopped:
            return {"status": self._stopped[key], "repeats": 0}
        projected = project_time(*self._measured.get(key, ([], [])), size)
        if projected is not None and projected > self.budget:
            status = f"skipped (projected {projected:.3g} s > budget {self.budget:g} s)"
            return {"status": status, "repeats": 0, "projected_s": projected}
        return None

    def record(
        self, key: Any, size: float, row: dict[str, Any], *, what: str, at: str, time_key: str
    ) -> None:
        """After a run: ``what`` names the series and ``at`` the cell in failure messages."""
        if row["status"] == "ok":
            sizes, times = self._measured.setdefault(key, ([], []))
            sizes.append(size)
            times.append(row[time_key])
        else:
            self.failures.append(f"{what} at {at}: {row['status']}")
            self._stopped[key] = f"not run (failed at {at})"


def ratios_at_largest(
    rows: Sequence[dict[str, Any]],
    pairs: Sequence[tuple[str, str]],
    size_keys: Sequence[str],
    time_key: str = "total_s",
) -> list[dict[str, Any]]:
    """Time ratio numerator/denominator of each method pair at the largest size both reached, per
    mixer where rows have one. A size is the tuple of ``row[k]`` for ``size_keys``; the largest
    has the largest sum (then tuple). Only rows with status ``ok`` count."""
    out = []
    for mixer in dict.fromkeys(r.get("mixer") for r in rows):
        ok = {
            (r["method"], tuple(r[k] for k in size_keys)): r[time_key]
            for r in rows
            if r["status"] == "ok" and r.get("mixer") == mixer
        }
        for num, den in pairs:
            if both := [size for (m, size) in ok if m == num and (den, size) in ok]:
                size = max(both, key=lambda s: (sum(s), s))
                out.append(
                    ({} if mixer is None else {"mixer": mixer})
                    | {
                        "numerator": num,
                        "denominator": den,
                        **dict(zip(size_keys, size, strict=True)),
                    }
                    | {"time_key": time_key, "ratio": ok[(num, size)] / ok[(den, size)]}
                )
    return out


def slopes(rows: Sequence[dict[str, Any]], config: Any) -> dict[str, Any]:
    """Per method (per mixer, then method, where the config has mixers): the fitted log-log slope
    of total time against L over every L, and over L >= ``config.slope_from`` when set."""

    def entry(mixer: str | None, method: str) -> dict[str, Any]:
        ok = [
            (r["L"], r["total_s"])
            for r in rows
            if (r.get("mixer"), r["method"], r["status"]) == (mixer, method, "ok")
        ]
        sizes = [x for x, _ in ok]
        out = {"all": fit_slope(sizes, [t for _, t in ok]), "points": len(ok)}
        out.update(L_min=min(sizes, default=None), L_max=max(sizes, default=None))
        if (slope_from := getattr(config, "slope_from", None)) is not None:
            tail = [(x, t) for x, t in ok if x >= slope_from]
            out["from"] = slope_from
            out["tail"] = fit_slope([x for x, _ in tail], [t for _, t in tail])
        return out

    if not hasattr(config, "mixers"):
        return {m: entry(None, m) for m in config.methods}
    return {x: {m: entry(x, m) for m in config.methods} for x in config.mixers}
