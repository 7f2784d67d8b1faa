"""The ``futurefill`` command line: one subcommand per job, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

# Modules that each define ``register(subparsers)``: adds its subcommand, with ``func`` set to a
# callable taking the parsed arguments and returning an exit code.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "futurefill.bench.cli",
    "futurefill.train",
    "futurefill.textgen",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="futurefill", description="Fast exact generation from convolutional sequence models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
