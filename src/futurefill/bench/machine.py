"""The machine a benchmark runs on: its description in the report, its threads and device.

:func:`machine_info` records what a reader needs to interpret the timings (CPU, cores, torch
threads, versions, device, git commit, load average); :func:`machine_line` says it in one line for
table headers and plot titles, and :func:`contention_warning` warns when other processes already
keep the cores busy. :func:`torch_threads` and :func:`resolve_device` set up the run.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from futurefill.cli import options as argtypes


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo where there is one, else what :mod:`platform` says."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def git_commit() -> str | None:
    """``HEAD`` of the repository this package lives in, with ``-dirty`` if it has local edits."""

    def git(*args: str) -> str | None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            here = Path(__file__).resolve().parent
            done = subprocess.run(
                ["git", *args], cwd=here, capture_output=True, text=True, timeout=10
            )
            return done.stdout.strip() if done.returncode == 0 else None
        return None

    head = git("rev-parse", "HEAD")
    return head and head + ("-dirty" if git("status", "--porcelain", "-uno") else "")


def load_average() -> float | None:
    with contextlib.suppress(AttributeError, OSError):  # not on Windows
        return round(os.getloadavg()[0], 2)
    return None


def machine_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """What a reader needs to interpret the timings: CPU, cores, threads, versions, device, load."""
    import futurefill

    now = datetime.datetime.now(datetime.timezone.utc)
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "logical_cores": os.cpu_count(),
        "available_cores": argtypes.available_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "futurefill_version": futurefill.__version__,
        "git_commit": git_commit(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "timestamp_utc": now.isoformat(timespec="seconds"),
        "load_average_1min": load_average(),
    }
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda_version=torch.version.cuda)
    return info


def contention_warning(info: dict[str, Any]) -> str | None:
    """A warning when other processes already keep the cores busy: with several torch threads,
    every parallel op waits for its slowest thread, and a descheduled one stalls it for a
    scheduler time slice (milliseconds), which swamps the microseconds of a decoding step."""
    load, cores, threads = info["load_average_1min"], info["available_cores"], info["torch_threads"]
    if load is None or load < 0.5 * cores:
        return None
    text = f"warning: load average {load:.1f} on {cores} cores before the benchmark: timings noisy"
    if threads > 1:
        text += f"; {threads} torch threads wait for descheduled ones (try --threads 1)"
    return text


def machine_line(info: dict[str, Any]) -> str:
    """One line naming the machine, for table headers and plot titles."""
    line = (
        f"{info.get('gpu') or info['cpu']} | {info['device']} {info['dtype']} | "
        f"{info['torch_threads']} threads ({info['available_cores']} cores) | "
        f"torch {info['torch_version']}"
    )
    if info.get("load_average_1min") is not None:
        line += f" | load {info['load_average_1min']:.1f}"
        if info.get("load_average_1min_after") is not None:
            line += f" before, {info['load_average_1min_after']:.1f} after"
    return line


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (default: every available core); restore after."""
    before = torch.get_num_threads()
    torch.set_num_threads(argtypes.available_cores() if threads is None else threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device
