"""Continuous batching: many requests decoded together, each at its own position.

A :class:`Scheduler` owns a :class:`~futurefill.decoder.Decoder` with independent rows (B slots
of ``max_len`` positions each: the memory of B single sessions, whatever the traffic) and one
engine thread that loops::

    release the slots of finished and cancelled requests
    admit waiting requests into free slots
    one decoder step of every running row, and the next piece of the first admitted prompt
        not yet done (``prefill_chunk`` tokens at most), in one forward of the model over the
        packed tokens (a long prompt takes several iterations: chunked prefill, so that the
        running rows wait for a chunk's tokens at most, not for a whole prompt)
    choose each row's next token (its own sampling and seed), stream its text, check its stops

Every request gets exactly the tokens it would get alone: its row's state is its own, greedy is
the argmax of its own logits, and a sampled request draws from its own seeded generator.
Requests arrive from any thread (:meth:`Scheduler.submit`); their events (text, then a finish
reason) go to the callback they gave, from the engine thread.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from futurefill.decoder import Decoder, DecoderOutput
from futurefill.generation import banned_tokens, select_next_tokens
from futurefill.tokenizers import StreamDecoder, Tokenizer

__all__ = ["Completion", "QueueFull", "Request", "Sampling", "Scheduler"]

FINISH_REASONS = ("stop", "length", "cancelled")

#: Prompt tokens prefilled per iteration at most, by default: the fastest setting measured on
#: the bundled model, halving the longest inter-token waits of whole prompts
#: (docs/results/cpu-2core/serve_chunks.md).
DEFAULT_PREFILL_CHUNK = 256


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
    """One completion: prompt ids, how many tokens at most, how to choose them, where to stop,
    and ``on_event(text, finish_reason)``, called from the engine thread with each piece of new
    text (finish_reason None) and once more at the end (text maybe empty, finish_reason one of
    ``stop``, ``length``, ``cancelled``)."""

    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    stop: Sequence[str] = ()
    on_event: Callable[[str, str | None], None] = lambda text, reason: None
    allowed_token_ids: Sequence[int] | None = None
    id: int = field(default_factory=itertools.count().__next__)
    # Set by the scheduler:
    arrived: float = 0.0
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)


@dataclass
class Completion:
    """The outcome of :meth:`Scheduler.complete` (a blocking call)."""

    text: str
    tokens: list[int]
    finish_reason: str


class _Row:
    """A running request's place in the batch: its slot, its next input, its text state."""

    def __init__(self, request: Request, slot: int, decoder: StreamDecoder, banned, generator):
        self.request, self.slot, self.decoder = request, slot, decoder
        self.banned, self.generator = banned, generator
        self.held = ""  # text not yet sent: it could be the start of a stop string
        self.fed = 0  # prompt tokens prefilled so far
        self.last_token = 0
        self.last_event = 0.0


class Scheduler:
    """Continuous batching over ``slots`` rows of ``model``; see the module docstring.

    Parameters
    ----------
    model : nn.Module
        A futurefill.nn model (see :class:`~futurefill.decoder.Decoder`).
    tokenizer : Tokenizer
        Decodes the generated ids into text (streaming, stop strings).
    slots : int
        Rows decoded together.
    max_len : int, optional
        Longest sequence (prompt plus generated); default the model's.
    method, compile : the decoder's.
    queue_size : int
        Requests that may wait for a slot; :meth:`submit` raises :class:`QueueFull` beyond.
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
            model,
            batch_size=slots,
            max_len=max_len,
            method=method,
            compile=compile,
            independent_rows=True,
        )
        self.tokenizer = tokenizer
        self.slots, self.max_len = slots, self.decoder.session.max_len
        self.queue_size, self.prefill_chunk = queue_size, prefill_chunk
        self.vocab_size = self.decoder.vocab_size or tokenizer.vocab_size
        self.metrics = metrics
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: dict[int, _Row] = {}  # slot -> row
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
        else:  # never started: nothing to cancel, the session to close
            self.decoder.close()

    def submit(self, request: Request) -> Request:
        """Queue ``request``; QueueFull when the queue is full, ValueError for a request that
        cannot fit (prompt plus ``max_tokens`` over ``max_len``, an id outside the vocabulary)."""
        self.check(request)
        with self._lock:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.queue_size:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already")
            request.arrived = time.perf_counter()
            self._waiting.append(request)
            self._lock.notify_all()
        return request

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

    def cancel(self, request: Request) -> None:
        """Stop ``request`` (waiting or running): its slot is freed at the next iteration."""
        with self._lock:
            request.cancelled = True
            self._lock.notify_all()

    def complete(self, request: Request, timeout: float | None = None) -> Completion:
        """Submit ``request`` and wait for its end (its ``on_event`` still called)."""
        done = threading.Event()
        parts: list[str] = []
        reason: list[str] = []
        forward = request.on_event

        def on_event(text: str, finish_reason: str | None) -> None:
            forward(text, finish_reason)
            parts.append(text)
            if finish_reason is not None:
                reason.append(finish_reason)
                done.set()

        request.on_event = on_event
        self.submit(request)
        if not done.wait(timeout):
            self.cancel(request)
            done.wait()
        return Completion("".join(parts), list(request.tokens), reason[0])

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def bytes_per_slot(self) -> int:
        """Bytes of decoding state one slot holds (the same as one single-sequence session)."""
        return self.decoder.nbytes // self.slots

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
            self._finish_all("cancelled")
            self.decoder.close()

    def _iterate(self) -> bool:
        """One iteration; False when the scheduler is stopping."""
        with self._lock:
            while not self._stopping and not self._waiting and not self._running:
                self._lock.wait()
            if self._stopping:
                return False
            admitted = self._take_waiting()
        for row in list(self._running.values()):
            if row.request.cancelled:
                self._finish(row, "cancelled")
        for request, slot in admitted:
            self._admit(request, slot)
        stepping = [row for row in self._running.values() if row.last_event]  # prefilled
        prefilling, piece = self._next_piece(decoding=bool(stepping))
        if prefilling is not None and stepping:  # one forward for both
            stepped, fed = self.decoder.step_and_extend(
                self._last_tokens(stepping), [row.slot for row in stepping], prefilling.slot, piece
            )
            self._emit(stepping, stepped)
            self._fed(prefilling, piece, fed)
            return True
        if prefilling is not None:
            feed = self.decoder.start if prefilling.fed == 0 else self.decoder.extend
            self._fed(prefilling, piece, feed(prefilling.slot, piece))
        if any(row.last_event for row in self._running.values()):  # a first token taken too
            self._step()
        return True

    def _take_waiting(self) -> list[tuple[Request, int]]:
        """Requests leaving the queue for free slots. Called with the lock held."""
        while self._waiting and self._waiting[0].cancelled:
            self._waiting.popleft().on_event("", "cancelled")
        free = [s for s in range(self.slots) if s not in self._running]
        taken = []
        while self._waiting and len(taken) < len(free):
            request = self._waiting.popleft()
            if request.cancelled:
                request.on_event("", "cancelled")
                continue
            taken.append((request, free[len(taken)]))
        return taken

    def _admit(self, request: Request, slot: int) -> None:
        sampling = request.sampling
        generator = None
        if sampling.temperature > 0:
            seed = sampling.seed if sampling.seed is not None else torch.seed()
            generator = torch.Generator(device=self.decoder.device).manual_seed(seed)
        allowed = request.allowed_token_ids
        banned = banned_tokens(None, allowed, self.vocab_size, self.decoder.device)
        self._running[slot] = _Row(
            request, slot, self.tokenizer.stream_decoder(), banned, generator
        )
        if self.metrics is not None:
            self.metrics.observe_admission(time.perf_counter() - request.arrived)

    def _next_piece(self, decoding: bool) -> tuple[_Row | None, torch.Tensor | None]:
        """The first admitted row whose prompt is not yet prefilled, and its next piece:
        ``prefill_chunk`` tokens at most while other rows are decoding (the piece shares their
        step's forward, so they wait for its tokens only), the whole rest when none is."""
        row = next((r for r in self._running.values() if r.fed < len(r.request.prompt_ids)), None)
        if row is None:
            return None, None
        prompt = row.request.prompt_ids
        end = row.fed + self.prefill_chunk if decoding else len(prompt)
        return row, torch.tensor(
            prompt[row.fed : end], dtype=torch.long, device=self.decoder.device
        )

    def _fed(self, row: _Row, piece: torch.Tensor, out: DecoderOutput) -> None:
        """``piece`` of ``row``'s prompt is in; at the prompt's end, its first token."""
        row.fed += len(piece)
        if row.fed == len(row.request.prompt_ids):
            self._emit([row], out)

    def _step(self) -> None:
        rows = [row for row in self._running.values() if row.last_event]  # prefilled
        self._emit(rows, self.decoder.step(self._last_tokens(rows), [row.slot for row in rows]))

    def _last_tokens(self, rows: list[_Row]) -> torch.Tensor:
        """Each row's last token, its next input ``(len(rows),)``."""
        return torch.tensor([row.last_token for row in rows], device=self.decoder.device)

    def _emit(self, rows: list[_Row], out: DecoderOutput) -> None:
        """Each row's next token from its logits (one host transfer for the greedy ones): then
        stream it and check its stops."""
        finite = torch.isfinite(out.logits).all(dim=-1).tolist()
        tokens = out.greedy.tolist()
        for i, row in enumerate(rows):
            if not finite[i]:
                self._finish(row, "stop", tail="")  # a broken model ends the request only
            else:
                if row.banned is not None or row.generator is not None:
                    tokens[i] = self._choose(row, out.logits[i])
                self._take(row, tokens[i])

    def _choose(self, row: _Row, logits: torch.Tensor) -> int:
        """``row``'s token from its logits ``(vocab,)``: its allowed tokens, its sampling."""
        if row.banned is not None:
            logits = logits.masked_fill(row.banned, -torch.inf)
        if row.generator is None:
            return int(logits.argmax())
        sampling = row.request.sampling
        chosen = select_next_tokens(
            logits[None],
            do_sample=True,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            generator=row.generator,
        )
        return int(chosen[0])

    def _take(self, row: _Row, token: int) -> None:
        """``token`` is ``row``'s next: stream its text, check the request's stops."""
        request = row.request
        request.tokens.append(token)
        row.last_token = token
        now = time.perf_counter()
        if self.metrics is not None:
            since = row.last_event or request.arrived
            self.metrics.observe_token(now - since, first=not row.last_event)
        row.last_event = now
        if token == self.tokenizer.eos_token_id:
            self._finish(row, "stop")
            return
        text = row.held + row.decoder.push(token)
        for stop in request.stop:
            at = text.find(stop)
            if at >= 0:  # the text before it, and nothing after
                request.on_event(text[:at], None)
                self._finish(row, "stop", tail="")
                return
        # Hold back what could be the start of a stop string until it is known not to be one.
        keep = max((len(stop) - 1 for stop in request.stop), default=0)
        cut = max(len(text) - keep, 0)
        row.held = text[cut:]
        if cut:
            request.on_event(text[:cut], None)
        if len(request.tokens) >= request.max_tokens:
            self._finish(row, "length")

    def _finish(self, row: _Row, reason: str, tail: str | None = None) -> None:
        """Free ``row``'s slot and send its last event (with the held and pending text, unless
        ``tail`` says what it is)."""
        self._running.pop(row.slot, None)
        self.decoder.release(row.slot)
        if tail is None:
            tail = "" if reason == "cancelled" else row.held + row.decoder.flush()
        if self.metrics is not None:
            self.metrics.observe_finish(reason)
        row.request.on_event(tail, reason)

    def _finish_all(self, reason: str) -> None:
        with self._lock:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for request in waiting:
            request.on_event("", reason)
        for row in list(self._running.values()):
            self._finish(row, reason)
