"""The options every benchmark has, and how a config field becomes a command-line option.

A benchmark's config is a dataclass whose fields are made with :func:`option`: each field is also
the option ``--field-name`` of ``futurefill bench <name>``, with its help line and checker.
:class:`Options` holds the fields every benchmark shares (precision, device, threads, repeats,
budget, tolerance, seed, output); :func:`check_options` refuses, for callers of the Python API,
what the command line would refuse. :data:`DTYPES` and :data:`DEFAULT_TOL` give each working
precision its torch dtype and its agreement tolerance.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from futurefill.cli import options as argtypes

DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
# Agreement tolerance: largest |y - y_ref| over the largest |y_ref|, y_ref computed in float64.
# float32 FFT and direct sums stay near 1e-6 at L = 2^16; half precisions are limited by rounding
# the outputs to 8 (bfloat16) or 11 (float16) significant bits.
DEFAULT_TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}
LENGTH = argtypes.bounded_int(1, None, "a length")
SIZE = argtypes.bounded_int(1, 2**20, "a size")
POSITIVE = argtypes.finite_float(0, low_open=True)


def option(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    """A config field that is also the command-line option ``--field-name``: its help line and
    what :meth:`argparse.ArgumentParser.add_argument` needs besides (``type``, ``choices``,
    ``nargs``, ``aliases``). A bool field is the flag ``--no-field-name``."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_kwargs})


def lengths_option(default: Iterable[int], help: str, **argparse_kwargs: Any) -> Any:
    """A config field of lengths, the option ``--field-name N [N ...]`` (each at least 1)."""
    return option(tuple(default), help, type=LENGTH, nargs="+", **argparse_kwargs)


def check_options(config: Any) -> None:
    """ValueError naming the field when a value is one its option would refuse (for callers of
    the Python API; the command line refuses it while parsing)."""
    for field in dataclasses.fields(config):
        value, meta = getattr(config, field.name), field.metadata
        values = value if isinstance(value, tuple | list) else (value,)
        if value is None or not meta:
            continue
        if "nargs" in meta and not values:
            raise ValueError(f"{field.name}: give at least one value")
        unknown = [v for v in values if "choices" in meta and v not in meta["choices"]]
        if unknown:
            raise ValueError(f"unknown {field.name} {unknown}; expected some of {meta['choices']}")
        for v in values if "type" in meta else ():
            try:
                meta["type"](str(v))
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"{field.name}: {exc}") from None


@dataclasses.dataclass
class Options:
    """The options every benchmark has (the CLI flags have the same names)."""

    dtype: str = option("float32", "working precision", choices=tuple(DTYPES))
    device: str = option("cpu", "cpu, cuda or cuda:N", type=argtypes.device_name)
    threads: int | None = option(
        None, "torch intra-op threads, 1 to the cores (default: all)", type=argtypes.threads
    )
    repeats: int = option(3, "runs per cell; the median is reported", type=argtypes.bounded_int(1))
    budget: float = option(30.0, "seconds one run may take (projected)", type=POSITIVE)
    warmup_len: int = option(32, "length of every method's warm-up run", type=LENGTH)
    tol: float | None = option(
        None, "agreement tolerance relative to the output scale (default: by dtype)", type=POSITIVE
    )
    seed: int = option(0, "seed of the random inputs and weights", type=argtypes.seed)
    out: Path = option(  # noqa: RUF009 (a Path is immutable)
        Path("results"), "directory for JSON, CSV, table and PNGs", type=argtypes.output_dir
    )
    progress: bool = option(True, "progress bars on stderr")
    plots: bool = option(True, "PNG plots")


@dataclasses.dataclass
class LengthSweep(Options):
    """The options of a sweep over generated lengths L (the benchmark declares its ``lengths``):
    a second slope fitted from ``slope_from`` on; its longest run."""

    slope_from: int | None = option(None, "also fit the slope over L >= this", type=LENGTH)

    @property
    def longest(self) -> int:
        return max(self.lengths)  # type: ignore[attr-defined]
