"""Serving: continuous batching of many requests over one model (:class:`Scheduler`) and an
OpenAI-compatible completions server on it (:func:`create_app`, ``futurefill serve``)."""

from futurefill.serving.metrics import Metrics
from futurefill.serving.requests import Completion, QueueFull, Request, Sampling
from futurefill.serving.scheduler import Handle, Scheduler

__all__ = ["Completion", "Handle", "Metrics", "QueueFull", "Request", "Sampling", "Scheduler"]
