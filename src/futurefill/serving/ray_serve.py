"""``futurefill serve`` on Ray Serve: a deployment whose replicas each hold one model and its
:class:`~futurefill.serving.Scheduler`, and serve the single server's routes.

Each replica builds its app with :func:`~futurefill.serving.server.create_app` (the same
``/v1/completions`` with streaming, ``/v1/models``, ``/health``, ``/metrics``, the tokenizer
routes, the same 4xx/429/503 JSON errors and the same API key), through Serve's ASGI ingress
with a builder function (``serve.ingress(builder)``, Ray >= 2.47): the builder runs on the
replica, after Ray has started its process, so the model is loaded there and never pickled; the
app's lifespan, which Serve runs on the replica, starts the scheduler and stops it (what is left
cancelled) when the replica shuts down. A request's rows live in the one replica that took it,
for its whole life, so Serve's router may send any request to any replica.

``max_ongoing_requests`` defaults to the replica's slots plus its queue (Serve's default, 5,
would keep a batch of 8 slots from filling); requests beyond wait in Serve's router, where the
autoscaler sees them. Autoscaling (``min_replicas`` .. ``max_replicas``) targets ``slots``
ongoing requests per replica unless told otherwise.

Run it with ``futurefill serve --ray``, ``serve run futurefill.serving.ray_serve:app`` (the
defaults: the bundled model), ``serve run futurefill.serving.ray_serve:build_app slots=16``, or
a Serve config file whose application has ``import_path: futurefill.serving.ray_serve:build_app``
and the options (:class:`Options`' fields) as ``args``. Ray is an optional dependency
(``pip install futurefill[ray]``); this module imports it only when an application is built.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from futurefill.serving.options import SchedulerOptions, check_int

__all__ = [
    "API_KEY_VARIABLE",
    "APP_NAME",
    "DEPLOYMENT_NAME",
    "Options",
    "build_app",
    "deployment",
    "replica_app",
]

#: The environment variable the API key defaults to where the application is built.
API_KEY_VARIABLE = "FUTUREFILL_API_KEY"
#: The application's name on the cluster (``futurefill serve --ray``) and its deployment's.
APP_NAME = "futurefill"
DEPLOYMENT_NAME = "FutureFill"
# The single server's: the requests in flight finish for up to this long at shutdown.
GRACEFUL_SHUTDOWN_S = 10.0


@dataclasses.dataclass(frozen=True)
class Options(SchedulerOptions):
    """What one replica runs and how many run: a :class:`SchedulerOptions` (``model`` a
    checkpoint directory on every node, None the bundled model; ``slots`` ... ``threads`` as
    ``futurefill serve``'s), the ``api_key``, and Serve's settings: ``num_replicas`` (default 1)
    or autoscaling between ``min_replicas`` (default 1) and ``max_replicas`` at
    ``target_ongoing_requests`` per replica (default ``slots``); ``max_ongoing_requests``
    (default ``slots + queue_size``); what one replica reserves: ``num_cpus`` (default
    ``threads``) and ``num_gpus`` (default 1 where CUDA is available where the application is
    built, else 0). ValueError for a value out of range."""

    api_key: str | None = dataclasses.field(default=None, repr=False)
    num_replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    max_ongoing_requests: int | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.api_key is not None and not (isinstance(self.api_key, str) and self.api_key):
            raise ValueError("api_key must be a non-empty string")
        if self.num_replicas is not None:
            check_int("num_replicas", self.num_replicas, 1)
        if self.min_replicas is not None:
            check_int("min_replicas", self.min_replicas, 0)
        if self.max_replicas is not None:
            check_int("max_replicas", self.max_replicas, 1)
        if self.max_replicas is None:
            if self.min_replicas is not None or self.target_ongoing_requests is not None:
                raise ValueError("min_replicas and target_ongoing_requests need max_replicas")
        elif self.num_replicas is not None:
            raise ValueError("num_replicas or max_replicas (autoscaling), not both")
        elif self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}"
            )
        if self.max_ongoing_requests is not None:
            check_int("max_ongoing_requests", self.max_ongoing_requests, 1)
        for name in ("target_ongoing_requests", "num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            ):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.target_ongoing_requests == 0:
            raise ValueError("target_ongoing_requests must be above 0")

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> Options:
        """Options from a Serve application's ``args`` (a config file's, or ``serve run``'s
        ``key=value`` pairs, whose values are strings); without ``api_key``, the key is
        ``$FUTUREFILL_API_KEY`` here, where the application is built (none if unset)."""
        args = dict(args or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - set(fields))
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r}; known: {', '.join(fields)}")
        values = {name: _parse(fields[name].type, name, value) for name, value in args.items()}
        if values.get("api_key") is None:
            values["api_key"] = os.environ.get(API_KEY_VARIABLE) or None
        return cls(**values)

    @property
    def autoscaling(self) -> dict[str, Any] | None:
        """Serve's ``autoscaling_config``, or None for a fixed ``num_replicas``."""
        if self.max_replicas is None:
            return None
        return {
            "min_replicas": 1 if self.min_replicas is None else self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests or self.slots,
        }


def _parse(kind: str, name: str, value: Any) -> Any:
    """A value of an ``args`` dict as its field's type (``serve run`` gives strings)."""
    if not isinstance(value, str) or kind.startswith("str"):
        return value
    text = value.strip()
    if text.lower() in ("none", "null", ""):
        return None
    try:
        if kind == "bool":
            return {"true": True, "false": False}[text.lower()]
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except (KeyError, ValueError):
        raise ValueError(f"{name} must be a {kind.split(' ')[0]}, got {value!r}") from None
    return value


def replica_app(options: Options):
    """The FastAPI app one replica serves: ``options``' model loaded here (on the replica's GPU
    where Ray gave it one), its scheduler (started and stopped by the app's lifespan) and
    :func:`~futurefill.serving.server.create_app` over them; the scheduler is
    ``app.state.scheduler``."""
    import torch

    from futurefill.serving import Metrics
    from futurefill.serving.server import create_app

    metrics = Metrics()
    on_gpu = options.num_gpus and torch.cuda.is_available()  # Ray set CUDA_VISIBLE_DEVICES
    scheduler, tokenizer = options.build(metrics, device="cuda" if on_gpu else None)
    app = create_app(
        scheduler,
        model_name=options.name,
        tokenizer=tokenizer,
        metrics=metrics,
        api_key=options.api_key,
    )
    app.state.scheduler = scheduler
    return app


class Replica:
    """A replica of the deployment: its ASGI app is :func:`replica_app`'s (set by Serve's
    ingress from the builder). Serve calls :meth:`check_health` periodically and replaces a
    replica whose engine thread has died."""

    def check_health(self) -> None:
        scheduler = self.app.state.scheduler
        if scheduler.error is not None:
            raise RuntimeError(f"the engine thread stopped: {scheduler.error!r}")


def _builder(options: Options):
    """A function Serve calls on each replica to build its app (a closure over ``options``:
    Serve's ingress takes a function of no arguments)."""

    def build():
        return replica_app(options)

    return build


def deployment(options: Options):
    """The Serve deployment of ``options`` (bind it for an application)."""
    import torch
    from ray import serve

    gpus = options.num_gpus
    if gpus is None:
        gpus = 1 if torch.cuda.is_available() else 0
        options = dataclasses.replace(options, num_gpus=gpus)
    cpus = options.threads if options.num_cpus is None else options.num_cpus
    actor: dict[str, Any] = {"num_cpus": cpus}
    if gpus:
        actor["num_gpus"] = gpus
    settings: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": actor,
        "max_ongoing_requests": options.max_ongoing_requests or options.slots + options.queue_size,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
    }
    if options.autoscaling is None:
        settings["num_replicas"] = options.num_replicas or 1
    else:
        settings["autoscaling_config"] = options.autoscaling
    return serve.deployment(serve.ingress(_builder(options))(Replica), **settings)


def build_app(args: dict[str, Any]):
    """Serve's application builder: the application of ``args`` (:meth:`Options.from_args`),
    for ``serve run futurefill.serving.ray_serve:build_app key=value ...`` or a config file's
    ``import_path`` and ``args``."""
    return deployment(Options.from_args(args)).bind()


def __getattr__(name: str):
    """``app``: the application of the defaults (the bundled model), built on first use, for
    ``serve run futurefill.serving.ray_serve:app``."""
    if name == "app":
        return build_app({})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
