"""What every ``futurefill`` subcommand shares: a parser whose errors are one line, value checkers
for its options, and the handling of runtime failures a user can cause.

A bad option ends the command before any work with ``futurefill <command>: error: argument
--opt: <what is accepted>, got <value>`` on stderr and exit status 2: the checkers below raise
``argparse.ArgumentTypeError``, and :class:`UsageError` carries the checks that involve several
options. A broken pipe ends quietly (status 0), Ctrl-C with one line (130), an OS error (an
unwritable file) with one line (1).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = [
    "ArgumentParser",
    "UsageError",
    "available_cores",
    "bounded_int",
    "byte_size",
    "device_name",
    "finite_float",
    "output_dir",
    "run_command",
    "total_memory",
]


class UsageError(Exception):
    """A bad combination of options, found after parsing: reported like a parser error."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (no usage block) and exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def total_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def bounded_int(
    low: int, high: int | None = None, what: str = "an integer"
) -> Callable[[str], int]:
    """An option value: an integer in ``[low, high]``."""
    accepted = f"{what} >= {low}" if high is None else f"{what} in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {value}")
        return value

    return parse


def finite_float(
    low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Callable[[str], float]:
    """An option value: a finite number in the interval given (open or closed at each end)."""
    left, right = "(" if low_open else "[", ")" if high_open or high is None else "]"
    accepted = f"a finite number in {left}{low}, {'inf' if high is None else high}{right}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}") from None
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text}")
        return value

    return parse


BYTE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def byte_size(text: str) -> int:
    """A size in bytes: an integer >= 0, or one with a K, M, G or T suffix (powers of 1024)."""
    number, unit = text.strip(), ""
    if number[-1:].upper() in BYTE_UNITS:
        number, unit = number[:-1], number[-1].upper()
    try:
        value = int(number)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a size in bytes (an integer >= 0, or with a K/M/G/T suffix), got {text!r}"
        )
    return value * BYTE_UNITS[unit]


def threads(text: str) -> int:
    """An option value: a thread count from 1 to the cores this process may use."""
    return bounded_int(1, available_cores(), "a thread count")(text)


def seed(text: str) -> int:
    """An option value: a seed torch accepts, 0 .. 2^64 - 1."""
    return bounded_int(0, 2**64 - 1, "a seed")(text)


def device_name(text: str) -> str:
    """An option value: ``cpu``, or ``cuda``/``cuda:N`` where that device exists."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cpu":
        return text
    if device.type != "cuda":
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f"{text}: CUDA is not available on this machine (torch {torch.__version__}); use cpu"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA device(s)")
    return text


def output_dir(text: str) -> Path:
    """An option value: a directory that exists, or can be created, and is writable.

    Probed by creating (and removing) a temporary entry where the files would go, so nothing is
    left behind when a later option is rejected.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a directory, got an empty string")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(existing)
        os.rmdir(tempfile.mkdtemp(dir=existing))
    except OSError:
        raise argparse.ArgumentTypeError(
            f"{text}: cannot write there ({existing} is not a writable directory)"
        ) from None
    return path


def run_command(prog: str, func: Callable[[], int]) -> int:
    """Run a subcommand; turn the failures a user can cause into one line and an exit status."""
    try:
        return int(func() or 0)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, without a second error at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1


def check_choices(values: Sequence[str], known: Sequence[str], option: str) -> None:
    """UsageError unless every value is one of ``known``."""
    unknown = [v for v in values if v not in known]
    if unknown:
        raise UsageError(f"argument {option}: unknown {unknown}; choose from {', '.join(known)}")


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default once: ``(default: X)`` appended where the help does
    not say it already and there is one to show (not None, not a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        default = action.default
        nothing = default is None or default is False or default is argparse.SUPPRESS
        if "default" in help or nothing or not help:
            return help
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return help + " (default: %(default)s)"
        return help


def add_command(
    subparsers: argparse._SubParsersAction, name: str, help: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand of the ``futurefill`` command, its ``--help`` showing every default once."""
    return subparsers.add_parser(
        name, help=help, description=description, formatter_class=DefaultsFormatter
    )
