"""What a client sends to a :class:`~futurefill.serving.Scheduler` and what it gets back: a
:class:`Request` (with its :class:`Sampling`), a :class:`Completion` from the blocking
``complete``, :class:`QueueFull` when there is no room. The scheduler never changes a request:
what happens to it is the scheduler's own record."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Completion", "QueueFull", "Request", "Sampling"]


class QueueFull(RuntimeError):
    """The scheduler's queue holds ``queue_size`` requests already: try again later."""


@dataclass(frozen=True)
class Sampling:
    """How a request chooses its tokens: greedy at ``temperature`` 0, else sampled from its own
    generator seeded with ``seed`` (same seed, same tokens, whatever runs beside it)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass
class Request:
    """One completion as the client sends it: prompt ids, how many tokens at most, how to choose
    them, where to stop, and ``on_event(text, finish_reason)``, called from the engine thread with
    each piece of new text (finish_reason None) and once more at the end (text maybe empty,
    finish_reason one of ``stop``, ``length``, ``cancelled``). The scheduler never changes it."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: Sequence[str] = ()
    on_event: Callable[[str, str | None], None] = lambda text, reason: None
    allowed_token_ids: Sequence[int] | None = None
    id: int = field(default_factory=itertools.count().__next__)


@dataclass
class Completion:
    """The outcome of :meth:`Scheduler.complete <futurefill.serving.Scheduler.complete>` (a
    blocking call)."""

    text: str
    tokens: list[int]
    finish_reason: str
