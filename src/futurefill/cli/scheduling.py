"""The options of the commands that run a :class:`~futurefill.serving.Scheduler` (``serve``,
``batch``): which model, how many slots, the queue, chunked prefill, the prefix cache, the
engine; and the scheduler they build."""

from __future__ import annotations

import argparse

from futurefill.cli import options
from futurefill.online import ENGINES
from futurefill.serving.options import BUNDLED_NAME, SchedulerOptions
from futurefill.serving.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES
from futurefill.serving.scheduler import DEFAULT_PREFILL_CHUNK

__all__ = ["add_scheduler_options", "build_scheduler", "scheduler_options"]


def add_scheduler_options(parser: argparse.ArgumentParser) -> None:
    """``--model`` ... ``--trust-pickle`` on ``parser``."""
    parser.add_argument(
        "--model", default=None, help="checkpoint directory (default: the bundled demo model)"
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help=f"the model's id in the API (default: the directory's name, or {BUNDLED_NAME})",
    )
    parser.add_argument(
        "--slots", type=options.bounded_int(1, 1024), default=8, help="rows decoded together"
    )
    parser.add_argument(
        "--queue-size",
        type=options.bounded_int(0),
        default=64,
        help="requests that may wait for a slot; beyond, 429 with Retry-After",
    )
    parser.add_argument(
        "--prefill-chunk",
        type=options.bounded_int(1),
        default=DEFAULT_PREFILL_CHUNK,
        help="prompt tokens prefilled in one iteration at most (chunked prefill: the running "
        "rows wait for one chunk at most)",
    )
    parser.add_argument(
        "--prefix-cache-bytes",
        type=options.byte_size,
        default=DEFAULT_PREFIX_CACHE_BYTES,
        help="decoding state kept for recent prompts, so that a repeated prompt is not "
        "prefilled again (bytes, or with a K/M/G suffix, powers of 1024; 0 turns it off; "
        "default: 1G)",
    )
    parser.add_argument(
        "--method", choices=tuple(ENGINES), default="continuous", help="online convolution engine"
    )
    parser.add_argument(
        "--compile", action="store_true", help="each step one torch.compile graph of all slots"
    )
    parser.add_argument(
        "--threads", type=options.threads, default=1, help="torch CPU threads for the engine"
    )
    parser.add_argument(
        "--trust-pickle", action="store_true", help="open pickled weights that hold objects"
    )


def scheduler_options(args: argparse.Namespace) -> SchedulerOptions:
    """The :class:`SchedulerOptions` of parsed ``args``."""
    return SchedulerOptions(
        model=args.model,
        model_name=args.model_name,
        slots=args.slots,
        queue_size=args.queue_size,
        prefill_chunk=args.prefill_chunk,
        prefix_cache_bytes=args.prefix_cache_bytes,
        method=args.method,
        compile=args.compile,
        threads=args.threads,
        trust_pickle=args.trust_pickle,
    )


def build_scheduler(args: argparse.Namespace, metrics=None):
    """The model of ``args`` loaded and its scheduler built (not started): ``(scheduler,
    model_name, tokenizer)``; a bad ``--model`` is a UsageError naming it."""
    from futurefill.pretrained import CheckpointError

    settings = scheduler_options(args)
    try:
        scheduler, tokenizer = settings.build(metrics)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise options.UsageError(f"argument --model: {exc}") from None
    return scheduler, settings.name, tokenizer
