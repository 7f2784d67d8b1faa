"""Timing: the wall clock around a run, its steps and its prefill, and the steps' latency.

Wall clock with :func:`time.perf_counter`, after :func:`sync` (``torch.cuda.synchronize`` on a
CUDA device, nothing on CPU), so queued GPU work is counted where it belongs; Python's garbage
collector paused while a run is timed (:func:`paused_gc`). Steps are timed in dyadic chunks
(:func:`chunk_bounds`, :func:`timed_steps`) and one by one, for the latency distribution
(:func:`latency`), which is read against the machine's own floor (:func:`idle_steps`). On CUDA a
step's host time is when its kernels were queued, not run: :class:`StepEvents` times each step on
the device as well (CUDA events around it), for :func:`device_latency`.
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


class StepEvents:
    """The device time of every step of a run: a pair of CUDA events (``enable_timing``) recorded
    on the current stream before and after each step, read back after the step's chunk has
    synchronized (outside its timing). Pairs are reused in a ring of ``ring`` steps; a chunk
    longer than the ring reads the oldest pair before recording over it (waiting for that step,
    ``ring`` steps back, to have run)."""

    def __init__(self, length: int, ring: int = 16384):
        self.times = np.empty(length)  # seconds, per step
        self._pairs = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(min(ring, length))
        ]
        self._read = 0  # steps before this one have their time in ``times``

    def around(self, t: int, step: Callable[[int], Any]) -> None:
        """``step(t)`` between the two events of its pair."""
        if t - self._read >= len(self._pairs):
            self.read(t - len(self._pairs) + 1)
        start, end = self._pairs[t % len(self._pairs)]
        start.record()
        step(t)
        end.record()

    def read(self, upto: int) -> None:
        """The times of the steps before ``upto`` (waits for their end events)."""
        for t in range(self._read, upto):
            start, end = self._pairs[t % len(self._pairs)]
            end.synchronize()
            self.times[t] = start.elapsed_time(end) * 1e-3
        self._read = max(self._read, upto)


def timed_steps(
    step: Callable[[int], Any],
    length: int,
    device: torch.device,
    nbytes: Callable[[], int],
    device_time: bool = False,
) -> dict[str, Any]:
    """Call ``step(t)`` for t = 0 .. length - 1 (it keeps its own outputs): a timer around every
    step (host time: on CUDA a step's kernels may run after it returns) and every dyadic chunk
    (after a sync); ``nbytes()`` sampled between chunks, untimed. The garbage collector is paused.
    With ``device_time`` on a CUDA device, also CUDA events around every step
    (:class:`StepEvents`; their recording is inside the chunks' time, about 2 x 2 µs a step).

    Returns the record of the run: ``seconds``, ``chunks`` [(start, stop, seconds)], ``peak``
    bytes, ``steps`` (every step's host time, an array) and with ``device_time``
    ``device_steps`` (every step's device time; on CPU its host time) and ``step_clock``
    (``"cuda events"`` or ``"host"``)."""
    chunks, steps, peak, clock = [], np.empty(length), nbytes(), time.perf_counter
    events = StepEvents(length) if device_time and device.type == "cuda" else None

    def host_timed(t: int) -> None:
        before = clock()
        step(t)
        steps[t] = clock() - before

    timed_step = host_timed if events is None else lambda t: events.around(t, host_timed)
    with paused_gc():
        sync(device)
        for start, stop in chunk_bounds(length):
            began = clock()
            for t in range(start, stop):
                timed_step(t)
            sync(device)
            chunks.append((start, stop, clock() - began))
            if events is not None:
                events.read(stop)
            peak = max(peak, nbytes())
    record = {"seconds": sum(c for _, _, c in chunks), "chunks": chunks, "peak": peak}
    record["steps"] = steps
    if device_time:
        record["device_steps"] = steps if events is None else events.times
        record["step_clock"] = "host" if events is None else "cuda events"
    return record


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


def device_latency(step_times: np.ndarray, clock: str, first: int = 0) -> dict[str, Any]:
    """The device-time distribution of steps ``first ..`` (seconds): p50, p99, p99.9, max, and
    the clock that timed them (``"cuda events"``; ``"host"`` where there is no CUDA device)."""
    times = step_times[first:]
    return {
        "device_step_p50_s": float(np.median(times)),
        "device_step_p99_s": float(np.percentile(times, 99)),
        "device_step_p999_s": float(np.percentile(times, 99.9)),
        "device_step_max_s": float(times.max()),
        "step_clock": clock,
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
