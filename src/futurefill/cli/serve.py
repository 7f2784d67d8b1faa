"""``futurefill serve``: the OpenAI-compatible completions server on the command line, in this
process (uvicorn) or, with ``--ray``, as a Ray Serve application of replicas
(:mod:`futurefill.serving.ray_serve`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import ipaddress
import os
import signal
import sys
import threading
from collections.abc import Iterator

from futurefill.cli import options
from futurefill.cli.scheduling import add_scheduler_options, build_scheduler, scheduler_options

__all__ = ["API_KEY_VARIABLE", "register"]

#: The environment variable ``--api-key`` defaults to (a key kept out of the process list).
API_KEY_VARIABLE = "FUTUREFILL_API_KEY"
#: The options that only ``--ray`` takes.
RAY_OPTIONS = ("address", "replicas", "min_replicas", "max_replicas", "target_ongoing_requests")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    parser = options.add_command(
        subparsers,
        "serve",
        help="serve a model over HTTP: OpenAI completions API, continuous batching",
        description="Serve a model over HTTP (the OpenAI completions API) with continuous "
        "batching: requests join a running batch as slots free, each at its own position. "
        "With --ray, as a Ray Serve application: replicas, each a model and its slots.",
    )
    add_scheduler_options(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, loopback only; another address without "
        "--api-key prints a warning)",
    )
    parser.add_argument("--port", type=options.bounded_int(0, 65535), default=8000, help="port")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help="require 'Authorization: Bearer KEY' on the /v1 and tokenizer routes (401 "
        f"otherwise; /health and /metrics stay open) (default: ${API_KEY_VARIABLE}, else none)",
    )
    ray = parser.add_argument_group(
        "Ray Serve", "replicas of the server on a Ray cluster (pip install 'futurefill[ray]')"
    )
    ray.add_argument(
        "--ray",
        action="store_true",
        help="serve as a Ray Serve application: --host/--port are Serve's HTTP proxy",
    )
    ray.add_argument(
        "--address",
        default=None,
        help="the Ray cluster to join: 'auto' (the one `ray start` runs on this machine) or "
        "HOST:PORT of its head (default: start a local one, stopped on exit)",
    )
    ray.add_argument(
        "--replicas",
        type=options.bounded_int(1),
        default=None,
        help="replicas, each a model and its --slots (default: 1)",
    )
    ray.add_argument(
        "--min-replicas",
        type=options.bounded_int(0),
        default=None,
        help="autoscale from this many replicas (default: 1; with --max-replicas)",
    )
    ray.add_argument(
        "--max-replicas",
        type=options.bounded_int(1),
        default=None,
        help="autoscale up to this many replicas (default: no autoscaling)",
    )
    ray.add_argument(
        "--target-ongoing-requests",
        type=options.finite_float(0, low_open=True),
        default=None,
        help="autoscaling's target of requests in flight per replica (default: --slots)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.ray:
        return _run_ray(args)
    given = [name for name in RAY_OPTIONS if getattr(args, name) is not None]
    if given:
        raise options.UsageError(f"--{given[0].replace('_', '-')} needs --ray")
    return _run_single(args)


def _run_single(args: argparse.Namespace) -> int:
    import uvicorn

    from futurefill.serving import Metrics
    from futurefill.serving.server import create_app

    metrics = Metrics()
    scheduler, name, tokenizer = build_scheduler(args, metrics)
    _warn_without_key(args)
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


def _ray_options(args: argparse.Namespace):
    """The Ray Serve application's options from the command line's, or UsageError."""
    from futurefill.serving.ray_serve import Options

    if args.replicas is not None and args.max_replicas is not None:
        raise options.UsageError("--replicas or --min-replicas/--max-replicas, not both")
    if args.max_replicas is None:
        for name in ("min_replicas", "target_ongoing_requests"):
            if getattr(args, name) is not None:
                flag = name.replace("_", "-")
                raise options.UsageError(f"--{flag} needs --max-replicas (autoscaling)")
    elif args.min_replicas is not None and args.min_replicas > args.max_replicas:
        raise options.UsageError(
            f"--min-replicas {args.min_replicas} is above --max-replicas {args.max_replicas}"
        )
    settings = scheduler_options(args)
    if settings.model is not None and args.address is None:  # on this machine: check it here
        from futurefill.pretrained import CheckpointError, detect_format

        try:
            detect_format(settings.model)
        except CheckpointError as exc:
            raise options.UsageError(f"argument --model: {exc}") from None
        settings = dataclasses.replace(settings, model=os.path.abspath(settings.model))
    try:
        return Options(
            **dataclasses.asdict(settings),
            api_key=args.api_key or None,
            num_replicas=args.replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            target_ongoing_requests=args.target_ongoing_requests,
        )
    except ValueError as exc:
        raise options.UsageError(str(exc)) from None


def _run_ray(args: argparse.Namespace) -> int:
    """Deploy on a Ray cluster (a local one by default), print where it listens, block until
    SIGTERM or SIGINT, then take the application down (and Serve, where nothing else runs on
    it; a local cluster with it) and exit 0."""
    settings = _ray_options(args)
    try:
        import ray
        from ray import serve
    except ImportError:
        raise options.UsageError(
            "argument --ray: Ray Serve is not installed: pip install futurefill[ray]"
        ) from None
    from futurefill.serving.ray_serve import APP_NAME, deployment

    _warn_without_key(args)
    stop = threading.Event()
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in handled}
    try:
        try:
            ray.init(
                address="local" if args.address is None else args.address,
                configure_logging=False,
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise options.UsageError(f"argument --address: {exc}") from None
        except SystemExit:  # SIGTERM while Ray started: its own handler exits
            return 0
        for sig in handled:  # ray.init has set its own SIGTERM handler (sys.exit)
            signal.signal(sig, lambda *_: stop.set())
        return _deploy_and_wait(serve, deployment(settings), settings, args, stop)
    finally:
        if ray.is_initialized():
            _take_down(serve, APP_NAME)
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _deploy_and_wait(serve, deployment, settings, args: argparse.Namespace, stop) -> int:
    from futurefill.serving.ray_serve import APP_NAME, DEPLOYMENT_NAME

    serve.start(http_options={"host": args.host, "port": args.port})
    try:
        serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:  # the replicas did not start (Serve gave up)
        why = _last_line(str(exc)) or type(exc).__name__
        with contextlib.suppress(Exception):  # the replicas' error, from Serve's status
            status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
            why = f"{why} ({_last_line(status.message)})"
        print(f"futurefill serve: error: {why}", file=sys.stderr, flush=True)
        return 1
    if stop.is_set():  # asked to stop while deploying
        return 0
    where = "a local Ray cluster" if args.address is None else f"the Ray cluster {args.address}"
    scaling = settings.autoscaling
    if scaling is None:
        count = settings.num_replicas or 1
        replicas = f"{count} replica{'s' * (count > 1)}"
    else:
        replicas = f"{scaling['min_replicas']}-{scaling['max_replicas']} replicas (autoscaling)"
    print(
        f"futurefill serve: {settings.name} on http://{args.host}:{args.port}/v1 (Ray Serve on "
        f"{where}: {replicas} of {args.slots} slots, {args.method})",
        file=sys.stderr,
        flush=True,
    )
    while not stop.wait(1.0):
        pass
    return 0


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _take_down(serve, name: str) -> None:
    """Delete the application; shut Serve down where no other application runs on it."""
    with contextlib.suppress(Exception):  # Serve may not have started
        serve.delete(name)
        if serve.status().applications:
            return
    with contextlib.suppress(Exception):
        serve.shutdown()


def _warn_without_key(args: argparse.Namespace) -> None:
    if not args.api_key and not _loopback(args.host):
        print(
            f"futurefill serve: warning: --host {args.host} is reachable from other machines and "
            f"no --api-key is set (or ${API_KEY_VARIABLE}): anyone who can reach it can use it",
            file=sys.stderr,
            flush=True,
        )


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
