"""``futurefill batch IN.jsonl OUT.jsonl``: a file of completion requests (the OpenAI Batch
format) run offline on the scheduler, results written in the input's order, resumable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from futurefill.cli import options
from futurefill.cli.scheduling import add_scheduler_options, build_scheduler, scheduler_options

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
    parser.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Data: the lines through a pool of actors, each one model and its "
        "scheduler (needs pip install futurefill[ray])",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="with --ray: the cluster to join, e.g. 10.0.0.5:6379 or auto (default: a running "
        "local one, else a new one on this machine)",
    )
    parser.add_argument(
        "--actors",
        type=options.bounded_int(1),
        default=1,
        help="with --ray: actors, each holding a model (one GPU each where CUDA is present)",
    )
    add_scheduler_options(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from futurefill.serving.batch import BatchError, read_batch, resume_point

    if not args.input.is_file():
        raise options.UsageError(f"argument input: {args.input} is not a file")
    if args.output.resolve() == args.input.resolve():
        raise options.UsageError("argument output: it must differ from the input")
    if not args.ray and (args.address is not None or args.actors != 1):
        raise options.UsageError("argument --address/--actors: they go with --ray")
    try:  # before the model loads: an output that does not continue the input is refused
        if not args.overwrite:
            resume_point(read_batch(args.input), args.output)
    except BatchError as exc:
        raise options.UsageError(f"argument output: {exc}") from None
    except UnicodeDecodeError as exc:
        raise options.UsageError(f"argument input: not UTF-8 text ({exc.reason})") from None
    if args.ray:
        summary = _run_on_ray(args)
    else:
        summary = _run_here(args)
    print(
        f"futurefill batch: {summary.written} lines written ({summary.errors} failed), "
        f"{summary.skipped} done before; {summary.tokens} tokens in {summary.seconds:.1f} s, "
        f"{summary.tokens_per_second:.1f} tokens/s",
        file=sys.stderr,
    )
    return 0


def _run_on_ray(args: argparse.Namespace):
    try:
        import ray  # noqa: F401
    except ImportError:
        raise options.UsageError(
            "argument --ray: Ray is not installed: pip install futurefill[ray]"
        ) from None
    from futurefill.serving.ray_batch import run_batch_on_ray

    return run_batch_on_ray(
        scheduler_options(args),
        args.input,
        args.output,
        actors=args.actors,
        address=args.address,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )


def _run_here(args: argparse.Namespace):
    from futurefill.serving.batch import run_batch

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
    return summary
