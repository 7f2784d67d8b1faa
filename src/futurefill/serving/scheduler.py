"""Continuous batching: many requests decoded together, each at its own position.

A :class:`Scheduler` owns a :class:`~futurefill.decoder.Decoder` (B rows of ``max_len``
positions each, allocated once: its memory does not grow with the traffic) and one engine
thread, whose loop is split as vLLM v1 splits its engine loop::

    plan = schedule()       free the rows of finished and cancelled requests, admit waiting ones
                            into free rows, and say what to feed (no model call): a step of every
                            row whose prompt is in (its last token), and the next piece of the
                            first admitted prompt not yet in: ``prefill_chunk`` tokens at most
                            while rows step (they wait for a piece, not a whole prompt: chunked
                            prefill), the whole rest when none does
    outputs = run(plan)     steps and piece in one forward over the packed tokens where the
                            decoder packs (step_and_extend), else the piece, then the steps
    update(plan, outputs)   each row's next token (its own sampling and seeded generator), its
                            text streamed, its stops checked; a finished sample gets its last
                            event, and its row is freed by the next schedule(). A prompt that
                            ends is kept in the prefix cache and forked into the rows of the
                            request's other samples (n, best_of): one prefill for all of them

Every sample gets exactly the tokens it would get alone: its row's state is its own (a fork is
an exact copy of the prompt's), greedy is the argmax of its own logits, and a sampled one draws
from its own seeded generator. A request whose prompt is in the prefix cache (an LRU of
post-prefill states bounded in bytes, :class:`~futurefill.serving.prefix_cache.PrefixCache`)
starts from a copy of that state, without a prefill. Requests arrive from any thread
(:meth:`Scheduler.submit`); their events (:class:`~futurefill.serving.requests.Event`: text and
log-probabilities per sample, then a finish reason) go to their callback from the engine
thread. The caller's :class:`Request` is never changed: the scheduler keeps its own record of
each.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from futurefill.decoder import Decoder, DecoderOutput
from futurefill.generation import banned_tokens, select_next_tokens
from futurefill.pretrained.tokenizers import StreamDecoder, Tokenizer
from futurefill.serving.logprobs import Logprobs, TokenScores, score_tokens
from futurefill.serving.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES, CachedPrompt, PrefixCache
from futurefill.serving.requests import (
    MAX_LOGPROBS,
    Collector,
    Completion,
    Event,
    QueueFull,
    Request,
    Sampling,
)

__all__ = [
    "Completion",
    "Event",
    "Handle",
    "Piece",
    "Plan",
    "QueueFull",
    "Request",
    "Sampling",
    "Scheduler",
]

#: Prompt tokens prefilled per iteration at most, by default: the fastest setting measured on
#: the bundled model, halving the longest inter-token waits of whole prompts
#: (docs/results/cpu-2core/serve_chunks.md).
DEFAULT_PREFILL_CHUNK = 256

Outputs = tuple[DecoderOutput | None, DecoderOutput | None]  # the steps', the piece's


@dataclass(frozen=True)
class Piece:
    """A piece of a prompt to feed: ``row``'s next ``ids``; ``starts``, the prompt's first piece
    (the row starts its sequence); ``ends``, its last (its logits give the first token);
    ``offset``, where in the prompt it starts; ``scored``, whether every position's logits are
    needed (the prompt's log-probabilities, for ``echo`` with ``logprobs``)."""

    row: int
    ids: tuple[int, ...]
    starts: bool
    ends: bool
    offset: int = 0
    scored: bool = False


@dataclass(frozen=True)
class Plan:
    """What one iteration does (:meth:`Scheduler.schedule`): ``rows`` step with their last
    tokens ``ids``, and ``piece`` (maybe None) is fed; ``released`` and ``admitted`` are the rows
    freed and taken before it."""

    rows: tuple[int, ...] = ()
    ids: tuple[int, ...] = ()
    piece: Piece | None = None
    released: tuple[int, ...] = ()
    admitted: tuple[int, ...] = ()


@dataclass(eq=False)
class _Group:
    """The scheduler's record of a request: its samples, what happens to it; the caller's request
    untouched. Its prompt is fed in the row of sample 0 (how much is in: that row's position),
    then forked into the others' rows."""

    request: Request
    on_event: Callable[[Event], None]  # the request's, or complete()'s wrapping it
    arrived: float
    samples: list[_Sequence] = field(default_factory=list)
    cancelled: bool = False
    prompt_in: bool = False
    prompt_scores: list[TokenScores] = field(default_factory=list)  # echo with logprobs

    @property
    def scores_prompt(self) -> bool:
        """Whether its prompt's tokens' log-probabilities are reported."""
        return self.request.echo and self.request.logprobs is not None


@dataclass(eq=False)
class _Sequence:
    """One sample of a request: its row, its tokens, its text."""

    group: _Group
    index: int
    finished: bool = False
    tokens: list[int] = field(default_factory=list)  # generated (the first: its prompt is in)
    row: int = -1  # its row in the decoder, once admitted
    detokenizer: StreamDecoder | None = None
    banned: torch.Tensor | None = None  # (vocab,) bool: the tokens it may not choose
    generator: torch.Generator | None = None  # sampled requests only
    held: str = ""  # text not yet sent: it could be the start of a stop string
    last_event: float = 0.0  # when its last token came (0: none yet)
    text_length: int = 0  # characters of its text so far (the echoed prompt's included)
    cumulative_logprob: float = 0.0

    @property
    def request(self) -> Request:
        return self.group.request

    def emit(self, text: str, finish_reason: str | None = None, logprobs=None) -> None:
        scored = self.request.scores_samples and finish_reason is not None
        cumulative = self.cumulative_logprob if scored else None
        self.group.on_event(Event(self.index, text, finish_reason, logprobs, cumulative))


class Handle:
    """A submitted request (:meth:`Scheduler.submit`): its samples' tokens so far,
    :meth:`cancel`."""

    def __init__(self, group: _Group):
        self.request, self._group = group.request, group

    @property
    def tokens(self) -> list[int]:
        """The tokens sample 0 generated so far (a copy)."""
        return self.sample_tokens(0)

    def sample_tokens(self, index: int) -> list[int]:
        """The tokens sample ``index`` generated so far (a copy)."""
        return list(self._group.samples[index].tokens)

    @property
    def generated(self) -> int:
        """Tokens generated so far, every sample's."""
        return sum(len(sample.tokens) for sample in self._group.samples)

    def cancel(self) -> None:
        """Stop the request (see :meth:`Scheduler.cancel`)."""
        self._group.cancelled = True


class Scheduler:
    """Continuous batching over ``slots`` rows of ``model``; see the module docstring.

    Parameters
    ----------
    model : nn.Module
        A futurefill.nn model (see :class:`~futurefill.decoder.Decoder`).
    tokenizer : Tokenizer
        Decodes the generated ids into text (streaming, stop strings).
    slots : int
        Rows of the decoder: samples decoded together (a request takes ``best_of`` or ``n``).
    max_len : int, optional
        Longest sequence (prompt plus generated); default the model's.
    method, compile : the decoder's.
    queue_size : int
        Requests that may wait for rows; :meth:`submit` raises :class:`QueueFull` beyond.
    prefill_chunk : int
        Prompt tokens prefilled in one iteration at most while other rows are decoding (chunked
        prefill, each piece packed with their step in one forward). Smaller pieces shorten the
        running rows' longest waits at a price in throughput (docs/benchmarks.md, Serving).
    prefix_cache_bytes : int
        Bytes of post-prefill states kept for recent prompts (:class:`PrefixCache`); 0: none.
    metrics : object, optional
        With ``observe_*`` hooks (:class:`~futurefill.serving.metrics.Metrics`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        *,
        slots: int = 8,
        max_len: int | None = None,
        method: str = "continuous",
        compile: bool = False,
        queue_size: int = 64,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
        metrics=None,
    ):
        self.prefix_cache = PrefixCache(prefix_cache_bytes, metrics)
        self.decoder = Decoder(
            model, batch_size=slots, max_len=max_len, method=method, compile=compile
        )
        self.tokenizer = tokenizer
        self.slots, self.max_len = slots, self.decoder.max_len
        self.queue_size, self.prefill_chunk = queue_size, prefill_chunk
        self.vocab_size = self.decoder.vocab_size or tokenizer.vocab_size
        self.metrics = metrics
        self._waiting: collections.deque[_Group] = collections.deque()
        self._running: dict[int, _Sequence] = {}  # row -> sample, in order of admission
        self._groups: dict[int, _Group] = {}  # request id -> its record, until it ends
        self._lock = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what stopped the engine thread, if anything

    # ------------------------------------------------------------------ from any thread

    def start(self) -> Scheduler:
        """Start the engine thread."""
        self._thread = threading.Thread(target=self._loop, name="futurefill-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Cancel what is waiting and running (each sample gets its ``cancelled`` event) and stop
        the engine thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        else:  # never started: nothing to cancel, the decoder to close
            self.decoder.close()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has started the engine thread."""
        return self._thread is not None

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called: new requests are refused."""
        return self._stopping

    def submit(self, request: Request) -> Handle:
        """Queue ``request``; QueueFull when the queue is full, ValueError for a request that
        cannot fit (:meth:`check`) or whose ``id`` is in flight already."""
        return self._submit([(request, request.on_event)])[0]

    def submit_all(self, requests: list[Request]) -> list[Handle]:
        """Queue every request of ``requests`` at once, or none: QueueFull when the queue has
        no room for them all now (ValueError as :meth:`submit`)."""
        return self._submit([(request, request.on_event) for request in requests])

    def check(self, request: Request) -> None:
        """ValueError naming the field that does not fit (its message starts with the field's
        name), before anything is queued."""
        n = len(request.prompt_ids)
        if n < 1:
            raise ValueError("prompt: at least one token is needed")
        if request.max_tokens < 0:
            raise ValueError(f"max_tokens: must be >= 0, got {request.max_tokens}")
        if request.n < 1:
            raise ValueError(f"n: must be >= 1, got {request.n}")
        if request.best_of is not None and request.best_of < request.n:
            raise ValueError(f"best_of: must be >= n ({request.n}), got {request.best_of}")
        if request.samples > self.slots:
            field_name = "n" if request.best_of is None else "best_of"
            raise ValueError(
                f"{field_name}: {request.samples} samples exceed the server's {self.slots} slots "
                "(a request's samples are decoded side by side)"
            )
        if request.logprobs is not None and not 0 <= request.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs: must be in [0, {MAX_LOGPROBS}], got {request.logprobs}")
        if n > self.max_len:
            raise ValueError(
                f"prompt: its {n} tokens exceed the model's context of {self.max_len} tokens"
            )
        if n + request.max_tokens - 1 > self.max_len:
            raise ValueError(
                f"max_tokens: the prompt's {n} tokens + max_tokens {request.max_tokens} exceed "
                f"the model's context of {self.max_len + 1} tokens"
            )
        if min(request.prompt_ids) < 0 or max(request.prompt_ids) >= self.vocab_size:
            raise ValueError(f"prompt: token ids must be in [0, {self.vocab_size})")

    def cancel(self, request: Request | int) -> None:
        """Stop ``request`` (or the request of that id), waiting or running: its rows are freed
        at the next iteration. Nothing happens to a request that has ended."""
        with self._lock:
            group = self._groups.get(request if isinstance(request, int) else request.id)
        if group is not None:
            group.cancelled = True  # the engine thread reads it at its next schedule()

    def complete(self, request: Request, timeout: float | None = None) -> list[Completion]:
        """Submit ``request`` and wait for its end (its ``on_event`` still called): its ``n``
        completions (the best ``n`` of ``best_of``, :func:`best_samples`), by index."""
        collector = Collector(request.samples, logprobs=request.logprobs is not None)
        done = threading.Event()

        def on_event(event: Event) -> None:
            try:
                request.on_event(event)
            finally:  # the end, even when the caller's callback raises
                if collector.add(event):
                    done.set()

        (handle,) = self._submit([(request, on_event)])
        if not done.wait(timeout):
            handle.cancel()
            done.wait()
        return collector.completions(handle.sample_tokens, request.n)

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Samples holding a row."""
        return len(self._running)

    @property
    def bytes_per_slot(self) -> int:
        """Bytes of decoding state per row (the filter tables the rows share included)."""
        return self.decoder.nbytes // self.slots

    def _submit(self, requests: list[tuple[Request, Callable[[Event], None]]]) -> list[Handle]:
        for request, _ in requests:
            self.check(request)
        ids = [request.id for request, _ in requests]
        if len(set(ids)) < len(ids):
            raise ValueError("id: two requests have one id")
        with self._lock:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) + len(requests) > self.queue_size:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already")
            in_flight = [i for i in ids if i in self._groups]
            if in_flight:
                raise ValueError(f"id: request {in_flight[0]} is in flight already")
            groups = []
            for request, on_event in requests:
                group = _Group(request, on_event, arrived=time.perf_counter())
                group.samples = [_Sequence(group, index) for index in range(request.samples)]
                self._groups[request.id] = group
                self._waiting.append(group)
                groups.append(group)
            self._lock.notify_all()
        return [Handle(group) for group in groups]

    # ------------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while self._iterate():
                    pass
        except BaseException as error:  # report it, and end every request
            self.error = error
            raise
        finally:
            with self._lock:
                self._stopping = True  # nothing more is queued
            self._finish_all("cancelled")
            self.decoder.close()

    def _iterate(self) -> bool:
        """One iteration; False when the scheduler is stopping."""
        with self._lock:
            while not self._stopping and not self._waiting and not self._running:
                self._lock.wait()
            if self._stopping:
                return False
        plan = self.schedule()
        if plan.rows or plan.piece is not None:
            self.update(plan, self.run(plan))
        return True

    def schedule(self) -> Plan:
        """Free the rows of finished and cancelled samples, admit waiting requests into free
        rows (one per sample; a prompt in the prefix cache starts from its state at once), and
        plan the iteration (no model call): a step of every row whose prompt is in, and the
        next piece of the first admitted prompt not yet in, ``prefill_chunk`` tokens at most
        while rows step (they wait for its tokens only), the whole rest when none does."""
        released = []
        for sequence in list(self._running.values()):
            if sequence.group.cancelled and not sequence.finished:
                self._finish(sequence, "cancelled")
            if sequence.finished:
                del self._running[sequence.row]
                self.decoder.release(sequence.row)
                released.append(sequence.row)
        admitted = [row for group in self._take_waiting() for row in self._admit(group)]
        stepping = [row for row, sequence in self._running.items() if sequence.tokens]
        piece = None
        first = next(
            (s for s in self._running.values() if s.index == 0 and not s.group.prompt_in), None
        )
        if first is not None:
            prompt, fed = first.request.prompt_ids, self._position(first.row)
            end = min(fed + self.prefill_chunk, len(prompt)) if stepping else len(prompt)
            piece = Piece(
                first.row,
                tuple(prompt[fed:end]),
                starts=fed == 0,
                ends=end == len(prompt),
                offset=fed,
                scored=first.group.scores_prompt,
            )
        ids = tuple(self._running[row].tokens[-1] for row in stepping)
        return Plan(tuple(stepping), ids, piece, tuple(released), tuple(admitted))

    def run(self, plan: Plan) -> Outputs:
        """``plan`` on the decoder: the steps' outputs and the piece's (None where there is
        none), in one forward over the packed tokens where the decoder packs."""
        decoder, piece, fed = self.decoder, plan.piece, None
        ids = torch.tensor(plan.ids, dtype=torch.long, device=decoder.device)
        if piece is not None:
            chunk = torch.tensor(piece.ids, dtype=torch.long, device=decoder.device)
            scored = piece.scored
            if plan.rows and decoder.packs:
                return decoder.step_and_extend(
                    ids, list(plan.rows), piece.row, chunk, all_positions=scored
                )
            feed = decoder.start if piece.starts else decoder.extend
            fed = feed(piece.row, chunk, all_positions=scored)
        return (decoder.step(ids, list(plan.rows)) if plan.rows else None), fed

    def update(self, plan: Plan, outputs: Outputs) -> None:
        """Each stepped row's next token; for a piece, its prompt's log-probabilities (where
        asked) and, at the prompt's end, its first tokens (:meth:`_prompt_in`)."""
        steps, fed = outputs
        if steps is not None:
            self._sample([self._running[row] for row in plan.rows], steps)
        piece = plan.piece
        if piece is not None:
            group = self._running[piece.row].group
            if piece.scored:
                self._score_piece(group, piece, fed.logits)
            if piece.ends:
                self._prompt_in(group, fed.logits[-1:], restored=False)

    def _position(self, row: int) -> int:
        return int(self.decoder.positions[row])

    def _take_waiting(self) -> list[_Group]:
        """Requests leaving the queue for free rows, first come first served (one that needs
        more rows than are free waits, and so do those after it); the cancelled ones leave it
        ended."""
        with self._lock:
            cancelled = [group for group in self._waiting if group.cancelled]
            if cancelled:
                self._waiting = collections.deque(g for g in self._waiting if not g.cancelled)
            free, taken = self.slots - len(self._running), []
            while self._waiting and len(self._waiting[0].samples) <= free:
                taken.append(self._waiting.popleft())
                free -= len(taken[-1].samples)
        for group in cancelled:
            for sequence in group.samples:
                self._finish(sequence, "cancelled")
        return taken

    def _admit(self, group: _Group) -> list[int]:
        """``group``'s samples into free rows (their detokenizers, banned tokens, generators);
        a prompt in the prefix cache restored into all of them at once. The rows taken."""
        free = (r for r in range(self.slots) if r not in self._running)
        request, device = group.request, self.decoder.device
        banned = banned_tokens(None, request.allowed_token_ids, self.vocab_size, device)
        for sequence in group.samples:
            if request.sampling.temperature > 0:
                seed = torch.seed() if request.sampling.seed is None else request.sampling.seed
                seed = (seed + sequence.index) % 2**64
                sequence.generator = torch.Generator(device=device).manual_seed(seed)
            sequence.banned, sequence.row = banned, next(free)
            sequence.detokenizer = self.tokenizer.stream_decoder()
            self._running[sequence.row] = sequence
        if self.metrics is not None:
            self.metrics.observe_admission(time.perf_counter() - group.arrived)
        rows = [sequence.row for sequence in group.samples]
        cached = None if group.scores_prompt else self.prefix_cache.get(request.prompt_ids)
        if cached is not None:
            self.decoder.restore(rows, cached.snapshot)
            self._prompt_in(group, cached.logits[None], restored=True)
        return rows

    def _score_piece(self, group: _Group, piece: Piece, logits: torch.Tensor) -> None:
        """The log-probabilities of the prompt's tokens that ``piece``'s logits ``(m, vocab)``
        predict (each position's, the next token's)."""
        prompt, k = group.request.prompt_ids, group.request.logprobs
        targets = prompt[piece.offset + 1 : piece.offset + len(piece.ids) + 1]
        if targets:
            chosen = torch.tensor(targets, device=logits.device)
            group.prompt_scores.append(score_tokens(logits[: len(targets)], chosen, k))

    def _prompt_in(self, group: _Group, logits: torch.Tensor, restored: bool) -> None:
        """``group``'s prompt is in sample 0's row (or, ``restored``, in every sample's row):
        keep its state in the prefix cache, fork it into the other samples' rows, send the
        echoed prompt, and give each sample its first token from ``logits`` ``(1, vocab)``."""
        group.prompt_in = True
        request, samples = group.request, group.samples
        first = samples[0]
        if not restored and self.prefix_cache.capacity:
            state = CachedPrompt(self.decoder.snapshot(first.row), logits[0].clone())
            self.prefix_cache.put(request.prompt_ids, state)
        if not restored and len(samples) > 1 and request.max_tokens > 0:
            self.decoder.fork(first.row, [sequence.row for sequence in samples[1:]])
        if request.echo:
            text, logprobs = self._echo(group)
            for sequence in samples:
                sequence.text_length = len(text)
                sequence.emit(text, logprobs=logprobs)
        if request.max_tokens == 0:
            for sequence in samples:
                self._finish(sequence, "length", tail="")
            return
        greedy = logits.argmax(dim=-1)
        count = len(samples)
        self._sample(samples, DecoderOutput(logits.expand(count, -1), greedy.expand(count)))

    def _echo(self, group: _Group) -> tuple[str, Logprobs | None]:
        """The prompt's text and, with ``logprobs``, its tokens' log-probabilities (the first
        None)."""
        request = group.request
        decoder, pieces = self.tokenizer.stream_decoder(), []
        for token in request.prompt_ids:
            pieces.append(decoder.push(token))
        text = "".join(pieces) + decoder.flush()
        if request.logprobs is None:
            return text, None
        chosen = [None] + [lp for scores in group.prompt_scores for lp in scores.chosen]
        top = [None] + [t for scores in group.prompt_scores for t in scores.top]
        offsets = itertools.accumulate((len(piece) for piece in pieces[:-1]), initial=0)
        logprobs = Logprobs(
            [self.tokenizer.token_string(token) for token in request.prompt_ids],
            chosen,
            [
                None if t is None else self._top(t, token, lp)
                for t, token, lp in zip(top, request.prompt_ids, chosen, strict=True)
            ],
            list(offsets),
        )
        return text, logprobs

    def _top(self, top: list[tuple[int, float]], token: int, logprob: float) -> dict[str, float]:
        """A token's ``top_logprobs`` entry: the ``k`` most likely and the token itself (where
        two tokens have one text, the likelier one's value)."""
        string, entry = self.tokenizer.token_string, {}
        for i, lp in [*top, (token, logprob)]:  # most likely first
            entry.setdefault(string(i), lp)
        return entry

    def _sample(self, sequences: list[_Sequence], out: DecoderOutput) -> None:
        """Each sequence's next token from its logits (one host transfer for the greedy ones),
        and its log-probabilities where its request asks: then stream it and check its
        stops."""
        finite = torch.isfinite(out.logits).all(dim=-1).tolist()
        tokens = out.greedy.tolist()
        for i, sequence in enumerate(sequences):
            if finite[i] and (sequence.banned is not None or sequence.generator is not None):
                tokens[i] = self._choose(sequence, out.logits[i])
        scored = [i for i, s in enumerate(sequences) if finite[i] and s.request.scores_samples]
        scores = None
        if scored:
            k = max(sequences[i].request.logprobs or 0 for i in scored)
            chosen = torch.tensor([tokens[i] for i in scored], device=out.logits.device)
            scores = score_tokens(out.logits[scored], chosen, k)
        at = {i: j for j, i in enumerate(scored)}
        for i, sequence in enumerate(sequences):
            if not finite[i]:
                self._finish(sequence, "stop", tail="")  # a broken model ends the sample only
            elif i in at:
                self._take(sequence, tokens[i], scores.chosen[at[i]], scores.top[at[i]])
            else:
                self._take(sequence, tokens[i])

    def _choose(self, sequence: _Sequence, logits: torch.Tensor) -> int:
        """The token from ``logits`` ``(vocab,)``: its allowed tokens, its sampling."""
        if sequence.banned is not None:
            logits = logits.masked_fill(sequence.banned, -torch.inf)
        if sequence.generator is None:
            return int(logits.argmax())
        sampling = sequence.request.sampling
        chosen = select_next_tokens(
            logits[None],
            do_sample=True,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            generator=sequence.generator,
        )
        return int(chosen[0])

    def _take(
        self,
        sequence: _Sequence,
        token: int,
        logprob: float | None = None,
        top: list[tuple[int, float]] | None = None,
    ) -> None:
        """``token`` is the sequence's next (``logprob`` and ``top`` where its request scores
        it): stream its text, check the request's stops."""
        request = sequence.request
        sequence.tokens.append(token)
        now = time.perf_counter()
        if self.metrics is not None:
            since = sequence.last_event or sequence.group.arrived
            self.metrics.observe_token(now - since, first=not sequence.last_event)
        sequence.last_event = now
        logprobs = None
        if logprob is not None:
            sequence.cumulative_logprob += logprob
            if request.logprobs is not None:
                logprobs = Logprobs(
                    [self.tokenizer.token_string(token)],
                    [logprob],
                    [self._top(top, token, logprob)],
                    [sequence.text_length],
                )
        if token == self.tokenizer.eos_token_id:
            self._finish(sequence, "stop", logprobs=logprobs)
            return
        new = sequence.detokenizer.push(token)
        sequence.text_length += len(new)
        text = sequence.held + new
        for stop in request.stop:
            at = text.find(stop)
            if at >= 0:  # the text before it, and nothing after
                sequence.emit(text[:at], logprobs=logprobs)
                self._finish(sequence, "stop", tail="")
                return
        # Hold back what could be the start of a stop string until it is known not to be one.
        keep = max((len(stop) - 1 for stop in request.stop), default=0)
        cut = max(len(text) - keep, 0)
        sequence.held = text[cut:]
        if cut or logprobs is not None:
            sequence.emit(text[:cut], logprobs=logprobs)
        if len(sequence.tokens) >= request.max_tokens:
            self._finish(sequence, "length")

    def _finish(
        self,
        sequence: _Sequence,
        reason: str,
        tail: str | None = None,
        logprobs: Logprobs | None = None,
    ) -> None:
        """Send the sample's last event (with the held and pending text, unless ``tail`` says
        what it is); its row, if it has one, is freed by the next :meth:`schedule`. The request
        ends with its last sample."""
        sequence.finished = True
        group = sequence.group
        if all(s.finished for s in group.samples):
            with self._lock:
                self._groups.pop(group.request.id, None)
        if tail is None:  # (a cancelled request may never have had a row, nor a detokenizer)
            tail = "" if reason == "cancelled" else sequence.held + sequence.detokenizer.flush()
        if self.metrics is not None:
            self.metrics.observe_finish(reason)
        sequence.emit(tail, reason, logprobs)

    def _finish_all(self, reason: str) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
        samples = [s for group in waiting for s in group.samples]
        for sequence in [*samples, *self._running.values()]:
            if not sequence.finished:  # each one ends, whatever the others' callbacks raise
                with contextlib.suppress(Exception):
                    self._finish(sequence, reason)
