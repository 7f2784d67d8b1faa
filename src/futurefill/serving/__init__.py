"""Serving: continuous batching of many requests over one model (:class:`Scheduler`, with a
prefix cache of post-prefill states, :class:`PrefixCache`) and an OpenAI-compatible completions
server on it (:func:`create_app`, ``futurefill serve``)."""

from futurefill.serving.logprobs import Logprobs
from futurefill.serving.metrics import Metrics
from futurefill.serving.prefix_cache import PrefixCache
from futurefill.serving.requests import Completion, Event, QueueFull, Request, Sampling
from futurefill.serving.scheduler import Handle, Scheduler

__all__ = [
    "Completion",
    "Event",
    "Handle",
    "Logprobs",
    "Metrics",
    "PrefixCache",
    "QueueFull",
    "Request",
    "Sampling",
    "Scheduler",
]
