"""Timing: the wall clock around a run, its steps and its prefill, and the steps' latency.

Wall clock with :func:`time.perf_counter`, after :func:`sync` (``torch.cuda.synchronize`` on a
CUDA device, nothing on CPU), so queued GPU work is counted where it belongs; Python's garbage
collector paused while a run is timed (:func:`paused_gc`). Steps are timed in dyadic chunks
(:func:`chunk_bounds`, :func:`timed_steps`) and one by one, for the latency distribution
(:func:`latency`), which is read against the machine's own floor (:func:`idle_steps`).
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

LATENCY_BUCKETS = 256  # positions are cut into this many buckets for the latency trace


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off while a run is timed (as :mod:`timeit` does): the
    outputs a run keeps for its agreement check, one tensor a step, would otherwise set off full
    collections of about 100 ms at random steps (seen at L = 2^16 and 2^18)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def sync(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chunk_bounds(length: int, first: int = 16) -> list[tuple[int, int]]:
    """Dyadic chunks of steps ``[0, first), [first, 2 first), [2 first, 4 first), ...``: every
    chunk after the first is as long as all steps before it, so the mean step time per chunk shows
    how the cost per token grows with position (a dyadic schedule's FFTs between n and 2n fall in
    chunk [n, 2n))."""
    bounds, start, stop = [], 0, min(first, length)
    while start < length:
        bounds.append((start, stop))
        start, stop = stop, min(2 * stop, length)
    return bounds


def timed_steps(
    step: Callable[[int], Any], length: int, device: torch.device, nbytes: Callable[[], int]
) -> dict[str, Any]:
    """Call ``step(t)`` for t = 0 .. length - 1 (it keeps its own outputs): a timer around every
    step (host time: on CUDA a step's kernels may run after it returns) and every dyadic chunk
    (after a sync); ``nbytes()`` sampled between chunks, untimed. The garbage collector is paused.

    Returns the record of the run: ``seconds``, ``chunks`` [(start, stop, seconds)], ``peak``
    bytes and ``steps`` (every step's time, an array)."""
    chunks, steps, peak, clock = [], np.empty(length), nbytes(), time.perf_counter
    with paused_gc():
        sync(device)
        for start, stop in chunk_bounds(length):
            began = clock()
            for t in range(start, stop):
                before = clock()
                step(t)
                steps[t] = clock() - before
            sync(device)
            chunks.append((start, stop, clock() - began))
            peak = max(peak, nbytes())
    return {"seconds": sum(c for _, _, c in chunks), "chunks": chunks, "peak": peak, "steps": steps}


def add_prefill(record: dict[str, Any], prompt_len: int, prefill: float, nbytes: int) -> None:
    """Make the :func:`timed_steps` record of the steps after a prefill of ``prompt_len``
    positions (``prefill`` seconds, ``nbytes`` held after it) the record of the whole run: chunks
    at absolute positions, ``decode`` the steps' seconds, ``seconds`` and ``peak`` with the
    prefill's."""
    record["chunks"] = [(a + prompt_len, b + prompt_len, s) for a, b, s in record["chunks"]]
    record.update(prefill=prefill, decode=record["seconds"], after_prefill=nbytes)
    record.update(seconds=prefill + record["seconds"], peak=max(record["peak"], nbytes))


def timed(func: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``func()`` and its time, synced before and after; the garbage collector paused."""
    with paused_gc():
        sync(device)
        began = time.perf_counter()
        result = func()
        sync(device)
        return result, time.perf_counter() - began


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def latency(step_times: np.ndarray, first: int = 0) -> dict[str, Any]:
    """The distribution of the times of steps ``first ..``: median, p99, p99.9, max (and where),
    and a trace of the largest and the median step per bucket of positions, for the plot. (A
    model's first token builds its decoding state: ``first=1`` leaves it out.)"""
    times = step_times[first:]
    buckets = np.array_split(times, min(LATENCY_BUCKETS, len(times)))
    starts = first + np.cumsum([0] + [len(b) for b in buckets[:-1]])
    return {
        "step_median_s": float(np.median(times)),
        "step_p99_s": float(np.percentile(times, 99)),
        "step_p999_s": float(np.percentile(times, 99.9)),
        "step_max_s": float(times.max()),
        "step_max_at": first + int(times.argmax()),
        "trace": [
            (int(a), float(b.max()), float(np.median(b)))
            for a, b in zip(starts, buckets, strict=True)
        ],
    }


def idle_steps(steps: int, device: torch.device) -> dict[str, Any]:
    """The latency of ``steps`` steps that each run one small fixed op (a (1, 128) multiply),
    timed like a method's steps: what this machine's scheduler, interrupts and timer alone do to
    a loop of that length. A method's largest step is read against this floor (on a shared
    2-core VM an idle loop of 2^18 such steps has a largest step of 80-100x its median)."""
    x = torch.ones(1, 128, device=device)
    out, times, clock = torch.empty_like(x), np.empty(steps), time.perf_counter
    with paused_gc():
        for t in range(steps):
            before = clock()
            torch.mul(x, x, out=out)
            times[t] = clock() - before
    return {"steps": steps} | {k: v for k, v in latency(times).items() if k != "trace"}
