"""The ``futurefill`` command line: one subcommand per job, each registered by its own module.

:mod:`~futurefill.cli.options` holds what every subcommand shares (option value checkers,
one-line errors); ``generate``, ``serve``, ``batch``, ``bench`` and ``train`` each have a module
here that parses the subcommand's options and calls the library (``serve`` and ``batch`` build
their scheduler through :mod:`~futurefill.cli.scheduling`). The library never imports this package
(only the benchmarks do, to declare their options with :mod:`~futurefill.cli.options`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from futurefill.cli import options

# Modules that each define ``register(subparsers)``: adds its subcommand, with ``func`` set to a
# callable taking the parsed arguments and returning an exit code.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "futurefill.cli.bench",
    "futurefill.cli.train",
    "futurefill.cli.generate",
    "futurefill.cli.serve",
    "futurefill.cli.batch",
)


def build_parser() -> argparse.ArgumentParser:
    parser = options.ArgumentParser(
        prog="futurefill", description="Fast exact generation from convolutional sequence models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, then run the subcommand; the exit status (2 with one line for a bad option, before
    any work; 0 after ``--help``)."""
    try:
        args, extra = build_parser().parse_known_args(argv)
    except SystemExit as exc:  # argparse has printed the error (or the help)
        return int(exc.code or 0)
    prog = " ".join(["futurefill", args.command, getattr(args, "bench_command", "") or ""]).strip()
    if extra:  # named by the subcommand, as its own parser's errors are
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
        return 2
    return options.run_command(prog, lambda: args.func(args))
