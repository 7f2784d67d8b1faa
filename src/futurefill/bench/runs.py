"""One cell of a sweep: its size, the setting, and a method's repeated runs on it.

:func:`repeat_runs` runs a method up to ``repeats`` times within the budget (:func:`should_repeat`),
checks the first run's outputs against the float64 reference (:func:`rel_err`) and reduces the
runs' records to the measured fields of the cell's row (medians, prefill and decode times, peak
bytes, the fastest run's step latency, host and, where timed, device).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from futurefill.bench.timing import device_latency, latency, median

Row = dict[str, Any]  # one method at one cell: its fields, status and measurements


@dataclasses.dataclass(frozen=True)
class Cell:
    """One size of a sweep: ``fields`` go into its rows (``{"L": 64}``, ``{"P": 8, "K": 4}``);
    their sum drives the budget projection."""

    fields: dict[str, int]

    @property
    def size(self) -> int:
        return sum(self.fields.values())

    @property
    def steps(self) -> int:
        """Steps one run takes: ``K`` after a prompt, else ``L``, else the size."""
        return self.fields.get("K", self.fields.get("L", self.size))

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.fields.items())


@dataclasses.dataclass(frozen=True)
class Setting:
    """What the sweep hands each measurement besides the method and the operands."""

    repeats: int
    budget: float
    tol: float
    device: torch.device


def should_repeat(times: Sequence[float], repeats: int, budget: float) -> bool:
    """Whether to run another repeat: fewer than ``repeats`` so far and it fits in the budget."""
    return len(times) < repeats and sum(times) + max(times, default=0.0) <= budget


def repeat_runs(
    run_once: Callable[[], tuple[dict[str, Any], Any]],
    check: Callable[[Any], float],
    setting: Setting,
) -> dict[str, Any]:
    """Run ``run_once()`` (one timed run: its record, with ``seconds``, and its outputs) up to
    ``setting.repeats`` times within the budget; ``check(outputs)`` gives the first run's error
    (outputs are deterministic), and a run beyond the tolerance ends the repeats.

    Returns the row's measured fields: status, error, repeats, the median of ``seconds`` as
    ``total_s`` and its list ``times_s``, the median chunks, setup and (with ``prefill`` in the
    records) prefill/decode times, peak bytes, and the fastest run's step latency (host; with
    ``device_steps`` in the records device too: :func:`~.timing.device_latency`)."""
    records: list[dict[str, Any]] = []
    err = math.nan
    while should_repeat([r["seconds"] for r in records], setting.repeats, setting.budget):
        record, outputs = run_once()
        records.append(record)
        if len(records) == 1:
            err = check(outputs)
            if not err <= setting.tol:  # also catches NaN
                break
        del outputs
    times = [r["seconds"] for r in records]
    ok = "ok" if err <= setting.tol else f"FAILED (max rel err {err:.2e} > tol {setting.tol:.1e})"
    row: dict[str, Any] = {"status": ok, "max_rel_err": err, "tol": setting.tol}
    row.update(total_s=median(times), repeats=len(records), times_s=times)
    row["chunks"] = [
        (a, b, median([r["chunks"][i][2] for r in records]) / (b - a))
        for i, (a, b, _) in enumerate(records[0]["chunks"])
    ]
    if "setup" in records[0]:
        row["setup_s"] = median([r["setup"] for r in records])
    if "prefill" in records[0]:
        prefills, decodes = [r["prefill"] for r in records], [r["decode"] for r in records]
        row.update(prefill_s=median(prefills), decode_s=median(decodes))
        row.update(prefill_times_s=prefills, decode_times_s=decodes)
        row["cache_bytes_after_prefill"] = records[-1]["after_prefill"]
    row["peak_cache_bytes"] = records[-1].get("peak")  # None: holds no cache (offline)
    fastest = min(records, key=lambda r: r["seconds"])
    first = fastest.get("first_step", 0)
    if "steps" in fastest:
        row.update(latency(fastest["steps"], first=first))
    if "device_steps" in fastest:
        row.update(device_latency(fastest["device_steps"], fastest["step_clock"], first=first))
    return row


def rel_err(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |actual - reference| relative to the largest |reference| (computed in float64)."""
    reference = reference.to(torch.float64)
    diff = (actual.to(torch.float64) - reference).abs().max().item()
    return float(diff / max(reference.abs().max().item(), 1e-300))
