"""``futurefill serve``: the OpenAI-compatible completions server on the command line."""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from futurefill.cli import options
from futurefill.online import ENGINES
from futurefill.serving.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES
from futurefill.serving.scheduler import DEFAULT_PREFILL_CHUNK

__all__ = ["API_KEY_VARIABLE", "register"]

#: The environment variable ``--api-key`` defaults to (a key kept out of the process list).
API_KEY_VARIABLE = "FUTUREFILL_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    parser = options.add_command(
        subparsers,
        "serve",
        help="serve a model over HTTP: OpenAI completions API, continuous batching",
        description="Serve a model over HTTP (the OpenAI completions API) with continuous "
        "batching: requests join a running batch as slots free, each at its own position.",
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint directory (default: the bundled demo model)"
    )
    parser.add_argument(
        "--model-name",
        default=None,
        help="the model's id in the API (default: the directory's name, or futurefill-pydoc-stu)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, loopback only; another address without "
        "--api-key prints a warning)",
    )
    parser.add_argument("--port", type=options.bounded_int(0, 65535), default=8000, help="port")
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
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help="require 'Authorization: Bearer KEY' on the /v1 and tokenizer routes (401 "
        f"otherwise; /health and /metrics stay open) (default: ${API_KEY_VARIABLE}, else none)",
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
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from futurefill.pretrained import CheckpointError
    from futurefill.pretrained.tokenizers import load_with_tokenizer
    from futurefill.serving import Metrics, Scheduler
    from futurefill.serving.server import create_app

    try:
        model, tokenizer, _ = load_with_tokenizer(args.model, trust_pickle=args.trust_pickle)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise options.UsageError(f"argument --model: {exc}") from None
    name = args.model_name or (
        Path(args.model).resolve().name if args.model else "futurefill-pydoc-stu"
    )
    torch.set_num_threads(args.threads)
    metrics = Metrics()
    scheduler = Scheduler(
        model,
        tokenizer,
        slots=args.slots,
        method=args.method,
        compile=args.compile,
        queue_size=args.queue_size,
        prefill_chunk=args.prefill_chunk,
        prefix_cache_bytes=args.prefix_cache_bytes,
        metrics=metrics,
    )
    if not args.api_key and not _loopback(args.host):
        print(
            f"futurefill serve: warning: --host {args.host} is reachable from other machines and "
            f"no --api-key is set (or ${API_KEY_VARIABLE}): anyone who can reach it can use it",
            file=sys.stderr,
            flush=True,
        )
    app = create_app(
        scheduler, model_name=name, tokenizer=tokenizer, metrics=metrics, api_key=args.api_key
    )
    print(
        f"futurefill serve: {name} on http://{args.host}:{args.port}/v1 ({args.slots} slots, "
        f"{args.method})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=10
    )
    server = uvicorn.Server(config)
    server.capture_signals = functools.partial(_capture_signals, server)
    server.run()
    return 0


def _loopback(host: str) -> bool:
    """Whether ``host`` binds the loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


@contextlib.contextmanager
def _capture_signals(server) -> Iterator[None]:
    """SIGTERM and SIGINT start uvicorn's graceful shutdown (the requests in flight finish, for
    up to ``timeout_graceful_shutdown`` seconds, what is left is cancelled, the scheduler
    stops); the process then exits with status 0 (uvicorn's own handler re-raises the signal)."""
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
