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
                            text streamed, its stops checked; a finished request gets its last
                            event, and its row is freed by the next schedule()

Every request gets exactly the tokens it would get alone: its row's state is its own, greedy is
the argmax of its own logits, and a sampled request draws from its own seeded generator.
Requests arrive from any thread (:meth:`Scheduler.submit`); their events (text, then a finish
reason) go to their callback from the engine thread. The caller's :class:`Request` is never
changed: the scheduler keeps its own record of each.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from futurefill.decoder import Decoder, DecoderOutput
from futurefill.generation import banned_tokens, select_next_tokens
from futurefill.pretrained.tokenizers import StreamDecoder, Tokenizer
from futurefill.serving.requests import Completion, QueueFull, Request, Sampling

__all__ = ["Completion", "Handle", "Piece", "Plan", "QueueFull", "Request", "Sampling", "Scheduler"]

#: Prompt tokens prefilled per iteration at most, by default: the fastest setting measured on
#: the bundled model, halving the longest inter-token waits of whole prompts
#: (docs/results/cpu-2core/serve_chunks.md).
DEFAULT_PREFILL_CHUNK = 256

Outputs = tuple[DecoderOutput | None, DecoderOutput | None]  # the steps', the piece's


@dataclass(frozen=True)
class Piece:
    """A piece of a prompt to feed: ``row``'s next ``ids``; ``starts``, the prompt's first piece
    (the row starts its sequence); ``ends``, its last (its logits give the first token)."""

    row: int
    ids: tuple[int, ...]
    starts: bool
    ends: bool


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
class _Sequence:
    """The scheduler's record of a request: what happens to it, the caller's request untouched.
    How much of its prompt is in is its row's position in the decoder."""

    request: Request
    on_event: Callable[[str, str | None], None]  # the request's, or complete()'s wrapping it
    arrived: float
    cancelled: bool = False
    finished: bool = False
    tokens: list[int] = field(default_factory=list)  # generated (the first: its prompt is in)
    row: int = -1  # its row in the decoder, once admitted
    detokenizer: StreamDecoder | None = None
    banned: torch.Tensor | None = None  # (vocab,) bool: the tokens it may not choose
    generator: torch.Generator | None = None  # sampled requests only
    held: str = ""  # text not yet sent: it could be the start of a stop string
    last_event: float = 0.0  # when its last token came (0: none yet)


class Handle:
    """A submitted request (:meth:`Scheduler.submit`): its tokens so far, :meth:`cancel`."""

    def __init__(self, sequence: _Sequence):
        self.request, self._sequence = sequence.request, sequence

    @property
    def tokens(self) -> list[int]:
        """The tokens generated so far (a copy)."""
        return list(self._sequence.tokens)

    def cancel(self) -> None:
        """Stop the request (see :meth:`Scheduler.cancel`)."""
        self._sequence.cancelled = True


class Scheduler:
    """Continuous batching over ``slots`` rows of ``model``; see the module docstring.

    Parameters
    ----------
    model : nn.Module
        A futurefill.nn model (see :class:`~futurefill.decoder.Decoder`).
    tokenizer : Tokenizer
        Decodes the generated ids into text (streaming, stop strings).
    slots : int
        Rows of the decoder: requests decoded together.
    max_len : int, optional
        Longest sequence (prompt plus generated); default the model's.
    method, compile : the decoder's.
    queue_size : int
        Requests that may wait for a row; :meth:`submit` raises :class:`QueueFull` beyond.
    prefill_chunk : int
        Prompt tokens prefilled in one iteration at most while other rows are decoding (chunked
        prefill, each piece packed with their step in one forward). Smaller pieces shorten the
        running rows' longest waits at a price in throughput (docs/benchmarks.md, Serving).
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
        metrics=None,
    ):
        self.decoder = Decoder(
            model, batch_size=slots, max_len=max_len, method=method, compile=compile
        )
        self.tokenizer = tokenizer
        self.slots, self.max_len = slots, self.decoder.max_len
        self.queue_size, self.prefill_chunk = queue_size, prefill_chunk
        self.vocab_size = self.decoder.vocab_size or tokenizer.vocab_size
        self.metrics = metrics
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._running: dict[int, _Sequence] = {}  # row -> sequence, in order of admission
        self._sequences: dict[int, _Sequence] = {}  # request id -> sequence, until it ends
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
        """Cancel what is waiting and running (each gets its ``cancelled`` event) and stop the
        engine thread."""
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
        cannot fit (prompt plus ``max_tokens`` over ``max_len``, an id outside the vocabulary)
        or whose ``id`` is in flight already."""
        return self._submit(request, request.on_event)

    def check(self, request: Request) -> None:
        """ValueError naming what does not fit, before anything is queued."""
        n = len(request.prompt_ids)
        if n < 1:
            raise ValueError("prompt: at least one token is needed")
        if request.max_tokens < 1:
            raise ValueError(f"max_tokens: must be >= 1, got {request.max_tokens}")
        if n + request.max_tokens - 1 > self.max_len:
            raise ValueError(
                f"max_tokens: the prompt's {n} tokens + max_tokens {request.max_tokens} exceed "
                f"the model's context of {self.max_len + 1} tokens"
            )
        if min(request.prompt_ids) < 0 or max(request.prompt_ids) >= self.vocab_size:
            raise ValueError(f"prompt: token ids must be in [0, {self.vocab_size})")

    def cancel(self, request: Request | int) -> None:
        """Stop ``request`` (or the request of that id), waiting or running: its row is freed at
        the next iteration. Nothing happens to a request that has ended."""
        with self._lock:
            sequence = self._sequences.get(request if isinstance(request, int) else request.id)
        if sequence is not None:
            sequence.cancelled = True  # the engine thread reads it at its next schedule()

    def complete(self, request: Request, timeout: float | None = None) -> Completion:
        """Submit ``request`` and wait for its end (its ``on_event`` still called)."""
        done = threading.Event()
        parts: list[str] = []
        reason: list[str] = []

        def on_event(text: str, finish_reason: str | None) -> None:
            try:
                request.on_event(text, finish_reason)
            finally:  # the end, even when the caller's callback raises
                parts.append(text)
                if finish_reason is not None:
                    reason.append(finish_reason)
                    done.set()

        handle = self._submit(request, on_event)
        if not done.wait(timeout):
            handle.cancel()
            done.wait()
        return Completion("".join(parts), handle.tokens, reason[0])

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests holding a row."""
        return len(self._running)

    @property
    def bytes_per_slot(self) -> int:
        """Bytes of decoding state per row (the filter tables the rows share included)."""
        return self.decoder.nbytes // self.slots

    def _submit(self, request: Request, on_event: Callable[[str, str | None], None]) -> Handle:
        self.check(request)
        with self._lock:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.queue_size:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already")
            if request.id in self._sequences:
                raise ValueError(f"id: request {request.id} is in flight already")
            sequence = _Sequence(request, on_event, arrived=time.perf_counter())
            self._sequences[request.id] = sequence
            self._waiting.append(sequence)
            self._lock.notify_all()
        return Handle(sequence)

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
        """Free the rows of finished and cancelled requests, admit waiting requests into free
        rows, and plan the iteration (no model call): a step of every row whose prompt is in,
        and the next piece of the first admitted prompt not yet in, ``prefill_chunk`` tokens at
        most while rows step (they wait for its tokens only), the whole rest when none does."""
        released = []
        for sequence in list(self._running.values()):
            if sequence.cancelled and not sequence.finished:
                self._finish(sequence, "cancelled")
            if sequence.finished:
                del self._running[sequence.row]
                self.decoder.release(sequence.row)
                released.append(sequence.row)
        admitted = [self._admit(sequence) for sequence in self._take_waiting()]
        stepping = [row for row, sequence in self._running.items() if sequence.tokens]
        piece = None
        row = next((row for row, s in self._running.items() if not s.tokens), None)
        if row is not None:
            prompt, fed = self._running[row].request.prompt_ids, self._position(row)
            end = min(fed + self.prefill_chunk, len(prompt)) if stepping else len(prompt)
            piece = Piece(row, tuple(prompt[fed:end]), starts=fed == 0, ends=end == len(prompt))
        ids = tuple(self._running[row].tokens[-1] for row in stepping)
        return Plan(tuple(stepping), ids, piece, tuple(released), tuple(admitted))

    def run(self, plan: Plan) -> Outputs:
        """``plan`` on the decoder: the steps' outputs and the piece's (None where there is
        none), in one forward over the packed tokens where the decoder packs."""
        decoder, piece, fed = self.decoder, plan.piece, None
        ids = torch.tensor(plan.ids, dtype=torch.long, device=decoder.device)
        if piece is not None:
            chunk = torch.tensor(piece.ids, dtype=torch.long, device=decoder.device)
            if plan.rows and decoder.packs:
                return decoder.step_and_extend(ids, list(plan.rows), piece.row, chunk)
            fed = (decoder.start if piece.starts else decoder.extend)(piece.row, chunk)
        return (decoder.step(ids, list(plan.rows)) if plan.rows else None), fed

    def update(self, plan: Plan, outputs: Outputs) -> None:
        """Each stepped row's next token, and the first token of a prompt the piece ended."""
        steps, fed = outputs
        if steps is not None:
            self._sample([self._running[row] for row in plan.rows], steps)
        if plan.piece is not None and plan.piece.ends:
            self._sample([self._running[plan.piece.row]], fed)

    def _position(self, row: int) -> int:
        return int(self.decoder.positions[row])

    def _take_waiting(self) -> list[_Sequence]:
        """Requests leaving the queue for free rows; the cancelled ones leave it ended."""
        with self._lock:
            cancelled = [sequence for sequence in self._waiting if sequence.cancelled]
            if cancelled:
                self._waiting = collections.deque(s for s in self._waiting if not s.cancelled)
            free = min(self.slots - len(self._running), len(self._waiting))
            taken = [self._waiting.popleft() for _ in range(free)]
        for sequence in cancelled:
            self._finish(sequence, "cancelled")
        return taken

    def _admit(self, sequence: _Sequence) -> int:
        """``sequence`` into a free row: its detokenizer, its banned tokens, its generator."""
        row = next(r for r in range(self.slots) if r not in self._running)
        request, device = sequence.request, self.decoder.device
        if request.sampling.temperature > 0:
            seed = torch.seed() if request.sampling.seed is None else request.sampling.seed
            sequence.generator = torch.Generator(device=device).manual_seed(seed)
        sequence.banned = banned_tokens(None, request.allowed_token_ids, self.vocab_size, device)
        sequence.row, sequence.detokenizer = row, self.tokenizer.stream_decoder()
        self._running[row] = sequence
        if self.metrics is not None:
            self.metrics.observe_admission(time.perf_counter() - sequence.arrived)
        return row

    def _sample(self, sequences: list[_Sequence], out: DecoderOutput) -> None:
        """Each sequence's next token from its logits (one host transfer for the greedy ones):
        then stream it and check its stops."""
        finite = torch.isfinite(out.logits).all(dim=-1).tolist()
        tokens = out.greedy.tolist()
        for i, sequence in enumerate(sequences):
            if not finite[i]:
                self._finish(sequence, "stop", tail="")  # a broken model ends the request only
            else:
                if sequence.banned is not None or sequence.generator is not None:
                    tokens[i] = self._choose(sequence, out.logits[i])
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

    def _take(self, sequence: _Sequence, token: int) -> None:
        """``token`` is the sequence's next: stream its text, check the request's stops."""
        request = sequence.request
        sequence.tokens.append(token)
        now = time.perf_counter()
        if self.metrics is not None:
            since = sequence.last_event or sequence.arrived
            self.metrics.observe_token(now - since, first=not sequence.last_event)
        sequence.last_event = now
        if token == self.tokenizer.eos_token_id:
            self._finish(sequence, "stop")
            return
        text = sequence.held + sequence.detokenizer.push(token)
        for stop in request.stop:
            at = text.find(stop)
            if at >= 0:  # the text before it, and nothing after
                sequence.on_event(text[:at], None)
                self._finish(sequence, "stop", tail="")
                return
        # Hold back what could be the start of a stop string until it is known not to be one.
        keep = max((len(stop) - 1 for stop in request.stop), default=0)
        cut = max(len(text) - keep, 0)
        sequence.held = text[cut:]
        if cut:
            sequence.on_event(text[:cut], None)
        if len(sequence.tokens) >= request.max_tokens:
            self._finish(sequence, "length")

    def _finish(self, sequence: _Sequence, reason: str, tail: str | None = None) -> None:
        """Send the sequence's last event (with the held and pending text, unless ``tail`` says
        what it is); its row, if it has one, is freed by the next :meth:`schedule`."""
        sequence.finished = True
        with self._lock:
            self._sequences.pop(sequence.request.id, None)
        if tail is None:  # (a cancelled request may never have had a row, nor a detokenizer)
            tail = "" if reason == "cancelled" else sequence.held + sequence.detokenizer.flush()
        if self.metrics is not None:
            self.metrics.observe_finish(reason)
        sequence.on_event(tail, reason)

    def _finish_all(self, reason: str) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for sequence in [*waiting, *self._running.values()]:
            if not sequence.finished:  # each one ends, whatever the others' callbacks raise
                with contextlib.suppress(Exception):
                    self._finish(sequence, reason)
