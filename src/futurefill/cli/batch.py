"""``futurefill batch IN.jsonl OUT.jsonl``: a file of completion requests (the OpenAI Batch
format) run offline on the scheduler, results written in the input's order, resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from futurefill.cli import options
from futurefill.cli.scheduling import add_scheduler_options, build_scheduler

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``batch`` subcommand."""
    parser = options.add_command(
        subparsers,
        "batch",
        help="run a file of completion requests (OpenAI Batch format) offline",
        description="Run a JSONL file of completion requests ({custom_id, method, url: "
        "/v1/completions, body}) on the scheduler (continuous batching) and write one result "
        "line per request, in the input's order. Run again with the same output, a stopped job "
        "goes on after the last line it wrote.",
    )
    parser.add_argument("input", type=Path, help="the requests, one JSON object a line")
    parser.add_argument("output", type=Path, help="the results (continued if it exists)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start the output anew (by default an existing output is continued after its "
        "last complete line, which must match the input's lines)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_scheduler_options(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from futurefill.serving.batch import BatchError, read_batch, resume_point, run_batch

    if not args.input.is_file():
        raise options.UsageError(f"argument input: {args.input} is not a file")
    if args.output.resolve() == args.input.resolve():
        raise options.UsageError("argument output: it must differ from the input")
    try:  # before the model loads: an output that does not continue the input is refused
        if not args.overwrite:
            resume_point(read_batch(args.input), args.output)
    except BatchError as exc:
        raise options.UsageError(f"argument output: {exc}") from None
    except UnicodeDecodeError as exc:
        raise options.UsageError(f"argument input: not UTF-8 text ({exc.reason})") from None
    scheduler, name, tokenizer = build_scheduler(args)
    try:
        summary = run_batch(
            scheduler,
            args.input,
            args.output,
            model_name=name,
            tokenizer=tokenizer,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    finally:
        scheduler.stop()
    print(
        f"futurefill batch: {summary.written} lines written ({summary.errors} failed), "
        f"{summary.skipped} done before; {summary.tokens} tokens in {summary.seconds:.1f} s, "
        f"{summary.tokens_per_second:.1f} tokens/s",
        file=sys.stderr,
    )
    return 0
