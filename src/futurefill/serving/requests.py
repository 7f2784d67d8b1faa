"""What a client sends to a :class:`~futurefill.serving.Scheduler` and what it gets back: a
:class:`Request` (with its :class:`Sampling`), the :class:`Event` stream of each of its samples,
:class:`Completion` s from the blocking ``complete``, :class:`QueueFull` when there is no room.
The scheduler never changes a request: what happens to it is the scheduler's own record."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from futurefill.serving.logprobs import Logprobs

__all__ = [
    "Collector",
    "Completion",
    "Event",
    "QueueFull",
    "Request",
    "Sampling",
    "best_samples",
]

#: The most top-logprobs a request may ask for per token (the OpenAI API's bound).
MAX_LOGPROBS = 20


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


@dataclass(frozen=True)
class Event:
    """What one sample of a request has to say, from the engine thread: new ``text`` (maybe
    empty), the ``logprobs`` of the tokens taken since the last event (requests with
    ``logprobs``; with ``echo`` the first event holds the prompt's), and at the end a
    ``finish_reason`` (``stop``, ``length`` or ``cancelled``) with the sample's
    ``cumulative_logprob`` (the sum of its tokens' log-probabilities; requests with ``logprobs``
    or ``best_of`` > ``n`` only)."""

    index: int  # the sample, in [0, request.samples)
    text: str
    finish_reason: str | None = None
    logprobs: Logprobs | None = None
    cumulative_logprob: float | None = None


@dataclass
class Request:
    """One completion request as the client sends it: prompt ids, how many tokens at most per
    sample, how to choose them, where to stop, how many samples, what to report, and
    ``on_event(event)`` (an :class:`Event` per piece of new text of a sample, and one at each
    sample's end). The scheduler never changes it.

    n : samples returned; best_of : samples generated (default ``n``), of which the ``n`` with
        the highest cumulative log-probability are returned (:func:`best_samples`); the prompt
        is prefilled once and its row forked into the others. Sample ``i`` of a seeded request
        draws from a generator seeded with ``seed + i`` (so sample 0 is the request alone).
    logprobs : report each token's log-probability and the ``logprobs`` most likely tokens'
        (0 to :data:`MAX_LOGPROBS`); None: none.
    echo : each sample's text starts with the prompt's (and with ``logprobs``, the prompt's
        tokens' log-probabilities, the first None); ``max_tokens`` 0 then scores the prompt
        alone (one forward, no decoding).
    """

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: Sequence[str] = ()
    on_event: Callable[[Event], None] = lambda event: None
    allowed_token_ids: Sequence[int] | None = None
    n: int = 1
    best_of: int | None = None
    logprobs: int | None = None
    echo: bool = False
    id: int = field(default_factory=itertools.count().__next__)

    @property
    def samples(self) -> int:
        """Samples generated: ``best_of``, default ``n``."""
        return self.best_of if self.best_of is not None else self.n

    @property
    def scores_samples(self) -> bool:
        """Whether its samples' log-probabilities are computed (reported, or to choose the best
        of them)."""
        return self.logprobs is not None or self.samples > self.n


@dataclass
class Completion:
    """One sample's outcome (:meth:`Scheduler.complete
    <futurefill.serving.Scheduler.complete>`, a blocking call): its text (the prompt's first
    with ``echo``), its generated tokens, why it ended, its log-probabilities where asked."""

    index: int
    text: str
    tokens: list[int]
    finish_reason: str
    logprobs: Logprobs | None = None
    cumulative_logprob: float | None = None


def best_samples(samples: list[Completion], n: int) -> list[Completion]:
    """The ``n`` of ``samples`` with the highest cumulative log-probability, best first, each
    re-indexed by its rank (OpenAI's ``best_of``); ``samples`` themselves when they are ``n``
    (in their order)."""
    if len(samples) == n:
        return samples
    ranked = sorted(samples, key=lambda sample: -sample.cumulative_logprob)[:n]
    return [replace(sample, index=rank) for rank, sample in enumerate(ranked)]


class Collector:
    """A request's events gathered into its completions (the blocking ``complete``, the server's
    responses that are not streamed).

    Parameters
    ----------
    samples : int
        The request's samples (``best_of``, default ``n``).
    logprobs : bool
        Whether its events carry log-probabilities (``logprobs`` asked).
    """

    def __init__(self, samples: int, logprobs: bool):
        self._texts: list[list[str]] = [[] for _ in range(samples)]
        self._logprobs = [Logprobs() if logprobs else None for _ in range(samples)]
        self._reasons: list[str | None] = [None] * samples
        self._cumulative: list[float | None] = [None] * samples

    @property
    def done(self) -> bool:
        """Whether every sample has ended."""
        return all(reason is not None for reason in self._reasons)

    def add(self, event: Event) -> bool:
        """Take ``event``; whether every sample has ended now."""
        i = event.index
        self._texts[i].append(event.text)
        if event.logprobs is not None and self._logprobs[i] is not None:
            self._logprobs[i].extend(event.logprobs)
        if event.finish_reason is not None:
            self._reasons[i], self._cumulative[i] = event.finish_reason, event.cumulative_logprob
        return self.done

    def completions(self, tokens: Callable[[int], list[int]], n: int) -> list[Completion]:
        """The ``n`` completions (the best of the samples where there are more), ``tokens(i)``
        giving sample ``i``'s generated tokens."""
        samples = [
            Completion(
                i,
                "".join(self._texts[i]),
                tokens(i),
                self._reasons[i] or "cancelled",
                self._logprobs[i],
                self._cumulative[i],
            )
            for i in range(len(self._texts))
        ]
        return best_samples(samples, n)
