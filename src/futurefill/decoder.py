"""The decoder: a batch of rows, each a sequence at its own position, decoded by a model.

:class:`Decoder` owns a decoding session (:func:`futurefill.decoding`) over a model whose time
mixing is :mod:`futurefill.nn`, and whether its steps run the model's eager forward or one
compiled graph (decided once, at construction)::

    with Decoder(model, batch_size=2, max_len=1024, method="continuous") as decoder:
        out = decoder.prefill(prompt_ids)       # (2, P) ids: every row starts, one pass
        out = decoder.step(out.greedy)          # (2,) ids -> logits (2, vocab), greedy (2,)
        out = decoder.start(1, other_prompt)    # (P',): row 1 starts anew, row 0 goes on
        out = decoder.step(ids, rows=[0])       # row 0 alone, one position on
        decoder.positions, decoder.nbytes       # (2,) positions; bytes of decoding state
        decoder.release(0)                      # row 0 free, ready for start()
        decoder.fork(1, [0])                    # row 0 a copy of row 1: both go on alone
        saved = decoder.snapshot(1)             # row 1's state aside (a RowSnapshot) ...
        decoder.restore([0], saved)             # ... and back, into any rows, any time

Forking (:meth:`Decoder.fork`, :meth:`Decoder.snapshot`, :meth:`Decoder.restore`) copies a
row's whole decoding state (every module's: engines' caches and tiles, short-convolution
histories, key/value caches) into other rows, which then go on exactly as if each had been fed
the same tokens: many samples of one prompt for one prefill. After a prompt of P tokens a row
holds O(P) (Continuous-FutureFill's inputs and known outputs, an attention cache) or O(state)
(``modal``), never the activations of the prefill.

Everything that decodes (:func:`futurefill.generate`, the scheduler, the benchmarks, the
command line) runs through it. Ragged prompts (``prefill(ids, prompt_lengths)``) start each row
with its own prompt: rows never hold padding.

Compiled (``compile=True``): a step of rows while every other row is free (at position 0) is the
model's per-token forward over every row, compiled once (a fixed-shape function of the states'
buffers and index tensors), and the work the rows' positions schedule (the FFT levels of the
tiles that end, batched across layers and rows), compiled once per *pattern*: what the work does
(which level sizes end, for how many rows), with where it does it (rows, positions) read from a
device tensor the host writes (:class:`~futurefill.nn.TracedPlan`). For Continuous-FutureFill in
lockstep there are about log2(max_len / b0) patterns, whatever the length. On CUDA the two are
captured together as one CUDA graph per pattern (:class:`CompiledStep`): a step is one copy of
its positions and one graph replay, and the graphs are kept through admissions and releases of
rows (recaptured only when a state's buffers move). A step beside a row that has started and
waits (in the middle of its chunked prompt) runs eagerly: the graph would feed that row too.
The compiled functions are kept on the model (forward) and in the process (scheduled work),
whatever the lengths.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from futurefill.checks import check_int
from futurefill.model import check_token_ids
from futurefill.nn import (
    DecodingSession,
    RowSnapshot,
    TracedPlan,
    decoding,
    schedule_function,
    unit_function,
)
from futurefill.nn.session import advance_positions

__all__ = ["Decoder", "DecoderOutput"]

# A batch-1 token step is bound by reading the weights once per token. On CPU inductor's
# "decompose_mm_pass" turns each (1, k) @ (k, n) product into a fused multiply-and-sum kernel
# spread over the intra-op threads, where MKL's GEMV reads the weights on one core (measured in
# docs/results/cpu-2core/tuning.md). Asked for only where this torch's inductor has the pass's
# CPU case; others compile without.
CPU_COMPILE_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}


class DecoderOutput(NamedTuple):
    """What a call gives, for the last position of every row it fed.

    logits : Tensor, shape (rows, vocab_size)
    greedy : LongTensor, shape (rows,), the argmax of ``logits`` (lowest id on ties)
    """

    logits: torch.Tensor
    greedy: torch.Tensor


class Decoder(contextlib.AbstractContextManager):
    """``batch_size`` rows decoded by ``model``, each at its own position; see the module
    docstring.

    Parameters
    ----------
    model : nn.Module
        Maps ids ``(batch, length)`` to logits ``(batch, length, vocab_size)`` (or to an object
        with ``.logits``), its time mixing :mod:`futurefill.nn`.
    batch_size : int
        Rows.
    max_len : int, optional
        Longest sequence of a row (prompt plus generated tokens fed back); default and maximum
        the model's (its shortest filter).
    method : str
        The online convolution engine of every long convolution
        (:data:`futurefill.online.ENGINES`; ``"modal"`` for models whose long filters
        declare a modal form).
    compile : bool
        Steps as one compiled graph (float32 or float64 models).
    prefill_chunk : int, optional
        Feed prompts (:meth:`prefill`, :meth:`start`, :meth:`extend`) in pieces of at most this
        many tokens: the activations of a pass are bounded by the piece (a long prompt's
        memory is then the decoding state plus one piece), the outputs the same. Default: a
        prompt in one pass.
    **engine_options
        The method's knobs (``epoch_len``, ``tile_len``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int,
        max_len: int | None = None,
        method: str = "continuous",
        compile: bool = False,
        prefill_chunk: int | None = None,
        **engine_options: int | None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be a bool, got {compile!r}")
        half = compile and {p.dtype for p in model.parameters()} & {torch.float16, torch.bfloat16}
        if half:
            raise ValueError(
                f"compile=True needs a float32 or float64 model (half precisions decode eagerly, "
                f"through float32), got {str(half.pop()).removeprefix('torch.')} parameters"
            )
        self.prefill_chunk = (
            None if prefill_chunk is None else check_int(prefill_chunk, "prefill_chunk")
        )
        self.model = model
        self.vocab_size: int | None = getattr(getattr(model, "config", None), "vocab_size", None)
        self.session: DecodingSession = decoding(
            model, batch_size=batch_size, max_len=max_len, method=method, **engine_options
        )
        self.device = self.session.device
        self._compiled = CompiledStep(model, self.session) if compile else None

    @property
    def batch_size(self) -> int:
        return self.session.batch_size

    @property
    def max_len(self) -> int:
        return self.session.max_len

    @property
    def positions(self) -> torch.Tensor:
        """Each row's positions consumed, a LongTensor ``(batch_size,)`` (a copy)."""
        return self.session.positions.clone()

    @property
    def nbytes(self) -> int:
        """Bytes held by the decoding state (engines, histories, caches)."""
        return self.session.nbytes

    @property
    def packs(self) -> bool:
        """Whether :meth:`step_and_extend` is available: an eager decoder's (a compiled one steps
        through its graph, so it steps and extends in two calls)."""
        return self._compiled is None

    @torch.inference_mode()
    def prefill(
        self, input_ids: torch.Tensor, prompt_lengths: Sequence[int] | torch.Tensor | None = None
    ) -> DecoderOutput:
        """Start every row with its prompt (rows of one length together, in one parallel pass).

        Parameters
        ----------
        input_ids : LongTensor, shape (batch_size, width)
            Prompts, right-padded when their lengths differ (the padding is never read).
        prompt_lengths : sequence of int or 1-D integer tensor, shape (batch_size,), optional
            Each prompt's length, in ``[1, width]``; default all ``width``.

        Returns
        -------
        DecoderOutput for each prompt's last position.
        """
        ids = check_input_ids(input_ids, self.device)
        batch = self.batch_size
        if ids.shape[0] != batch:
            raise ValueError(f"input_ids has batch {ids.shape[0]}, the decoder batch_size={batch}")
        lengths = check_prompt_lengths(prompt_lengths, batch, ids.shape[1])
        self._check_prompt(max(lengths))
        in_prompt = torch.arange(ids.shape[1], device=self.device) < torch.tensor(
            lengths, device=self.device
        ).unsqueeze(1)
        self._check_vocabulary(ids[in_prompt])
        self.session.reset()
        groups: dict[int, list[int]] = {}
        for row, length in enumerate(lengths):
            groups.setdefault(length, []).append(row)
        logits = None
        for length, rows in groups.items():
            out = self._feed(ids[rows, :length], rows)
            if len(groups) == 1:
                return out
            if logits is None:
                logits = out.logits.new_empty(batch, out.logits.shape[-1])
            logits[rows] = out.logits
        return DecoderOutput(logits, logits.argmax(dim=-1))

    @torch.inference_mode()
    def start(
        self, row: int, input_ids: torch.Tensor, *, all_positions: bool = False
    ) -> DecoderOutput:
        """Start a new sequence in ``row`` with its prompt ``(P,)``, in one parallel pass over
        that row alone: the other rows keep their state. The prompt's last position's
        :class:`DecoderOutput` (a batch of one), or with ``all_positions`` every position's
        (logits ``(P, vocab)``: what scoring a prompt needs)."""
        ids = self._row_ids(input_ids, "start takes one prompt (P,)")
        self._check_prompt(ids.shape[1])
        self.session.reset_rows([row])
        return self._feed(ids, [row], all_positions)

    @torch.inference_mode()
    def extend(
        self, row: int, input_ids: torch.Tensor, *, all_positions: bool = False
    ) -> DecoderOutput:
        """Feed the next piece ``(n,)`` of ``row``'s prompt (chunked prefill: one parallel pass,
        the engines' ``extend``). Its last position's :class:`DecoderOutput`, or with
        ``all_positions`` every position's (logits ``(n, vocab)``)."""
        ids = self._row_ids(input_ids, "extend takes one chunk (n,)")
        return self._feed(ids, [row], all_positions)

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, rows: Sequence[int] | None = None) -> DecoderOutput:
        """One token per row of ``rows`` (default every row), ``ids`` ``(len(rows),)``, each
        continuing its row from its own position; the other rows wait. The next position's
        :class:`DecoderOutput`."""
        session = self.session
        rows = session.all_rows if rows is None else tuple(rows)
        ids = self._step_ids(ids, rows)
        if self._compiled is None or not self._may_trace(rows):
            return self._feed(ids[:, None], rows)
        if rows != session.all_rows:
            every = ids.new_zeros(self.batch_size)
            every[list(rows)] = ids
        else:  # (an inference tensor, as every other step's: the graph's guards see one kind)
            every = ids if ids.is_inference() else ids.clone()
        logits, greedy = session.feed_traced(self._compiled, every[:, None], rows=rows)
        if rows == session.all_rows:
            return DecoderOutput(logits, greedy)
        return DecoderOutput(logits[list(rows)], greedy[list(rows)])

    @torch.inference_mode()
    def step_and_extend(
        self,
        ids: torch.Tensor,
        rows: Sequence[int],
        row: int,
        input_ids: torch.Tensor,
        *,
        all_positions: bool = False,
    ) -> tuple[DecoderOutput, DecoderOutput]:
        """``step(ids, rows)`` and the next piece ``(n,)`` of ``row``'s prompt (``row`` at
        position 0 starts its sequence) in one forward of the model over the packed chunk
        ``(1, len(rows) + n)`` (:meth:`~futurefill.nn.DecodingSession.feed_packed`), so that the
        position-wise layers run once for both: chunked prefill that costs the stepping rows
        about the piece's tokens, not a second forward. Returns the steps'
        :class:`DecoderOutput` and the piece's last position's (every position's with
        ``all_positions``). Eager decoders only (:attr:`packs`): a compiled decoder raises."""
        if not self.packs:
            raise ValueError("a compiled decoder steps through its graph: call step and extend")
        chunk = self._row_ids(input_ids, "step_and_extend takes one prompt piece (n,)")
        rows = tuple(rows)
        ids = self._step_ids(ids, rows)
        if int(self.session.positions[row]) == 0:
            self.session.reset_rows([row])
        packed = torch.cat([ids, chunk[0]])[None]
        output = self.session.feed_packed(packed, rows=rows, piece_row=row)
        logits = all_logits(output, 1)[0]
        steps, piece = logits[: len(rows)], logits[len(rows) :]
        if not all_positions:
            piece = piece[-1:]
        return DecoderOutput(steps, steps.argmax(dim=-1)), DecoderOutput(piece, piece.argmax(-1))

    def release(self, row: int) -> None:
        """Free ``row``: back to position 0, ready for :meth:`start`."""
        self.session.reset_rows([row])

    def fork(self, source: int, targets: Sequence[int]) -> None:
        """``targets`` start anew as copies of row ``source`` (untouched): each goes on exactly
        as ``source`` would (:meth:`~futurefill.nn.DecodingSession.fork`). Its next token comes
        from the logits ``source``'s last call gave."""
        self.session.fork(source, targets)

    def snapshot(self, row: int) -> RowSnapshot:
        """A copy of ``row``'s state that this decoder's calls never change (a prefix cache's
        entry), ``.nbytes`` its size; :meth:`restore` puts it into rows."""
        return self.session.snapshot(row)

    def restore(self, rows: Sequence[int], snapshot: RowSnapshot) -> None:
        """``rows`` start anew as copies of ``snapshot`` (one this decoder took)."""
        self.session.restore(rows, snapshot)

    def reset(self) -> None:
        """Free every row, allocations kept."""
        self.session.reset()

    def close(self) -> None:
        """Release the model's modules (ordinary modules again)."""
        self.session.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        compiled = ", compiled" if self._compiled is not None else ""
        session = self.session
        return (
            f"Decoder(batch_size={session.batch_size}, max_len={session.max_len}, "
            f"method={session.method!r}{compiled}, positions={session.positions.tolist()}, "
            f"nbytes={self.nbytes})"
        )

    def _may_trace(self, rows: tuple[int, ...]) -> bool:
        """Whether a compiled step of every row may serve ``rows``: the model has run once (its
        states exist), the rows have started, and every other row is free (the graph feeds it
        too)."""
        return self.session.calls > 0 and self.session.steps_started_rows(rows)

    def _feed(
        self, ids: torch.Tensor, rows: Sequence[int], all_positions: bool = False
    ) -> DecoderOutput:
        """``ids`` ``(len(rows), n)`` after those rows (in pieces of ``prefill_chunk``): the
        last position's output, or (one row) every position's."""
        piece = self.prefill_chunk or ids.shape[1]
        parts = []
        for start in range(0, ids.shape[1], piece):
            out = self.session.feed(ids[:, start : start + piece], rows=rows)
            if all_positions:
                parts.append(all_logits(out, 1)[0])
        if all_positions:
            logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        else:
            logits = last_logits(out, len(rows))
        return DecoderOutput(logits, logits.argmax(dim=-1))

    def _step_ids(self, ids: Any, rows: tuple[int, ...]) -> torch.Tensor:
        if (  # the usual case, checked inline: a step's cost is a few ops
            type(ids) is torch.Tensor
            and ids.dtype == torch.long
            and ids.shape == (len(rows),)
            and ids.device == self.device
        ):
            return ids
        ids = check_input_ids(ids[None] if isinstance(ids, torch.Tensor) else ids, self.device)
        if ids.shape[1] != len(rows):
            raise ValueError(f"ids has {ids.shape[1]} tokens for {len(rows)} rows")
        return ids[0]

    def _row_ids(self, input_ids: Any, what: str) -> torch.Tensor:
        """One row's ids ``(n,)`` (or ``(1, n)``) as ``(1, n)``, checked."""
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 1:
            input_ids = input_ids[None]
        ids = check_input_ids(input_ids, self.device)
        if ids.shape[0] != 1:
            raise ValueError(f"{what}, got {tuple(input_ids.shape)}")
        self._check_vocabulary(ids)
        return ids

    def _check_prompt(self, length: int) -> None:
        if length > self.max_len:
            raise ValueError(f"prompt length {length} exceeds the decoder's max_len {self.max_len}")

    def _check_vocabulary(self, ids: torch.Tensor) -> None:
        check_token_ids(ids, self.vocab_size or torch.iinfo(torch.long).max, "input_ids")


class CompiledStep:
    """The compiled token step of a decoder's ``session`` over every row: ``(plan, ids)`` ->
    the last logits ``(batch, vocab)`` and their argmax ``(batch,)``, for
    :meth:`~futurefill.nn.DecodingSession.feed_traced`.

    Compiled functions: the model's forward (:func:`compiled_forward`) and the plan's
    scheduled work (:func:`compiled_schedule`, one per unit of a plan key). On the CPU a step
    calls the forward, and the units of its key where it has any. On CUDA each key's forward
    and units are captured as one CUDA graph (after one ordinary run of the key, which compiles
    it and makes the libraries' plans), in one memory pool shared by the graphs (they never run
    at once): a step is the copy of its ids and of the plan's args (from pinned memory) and one
    replay. The graphs hold the addresses of the states' buffers
    (:attr:`~futurefill.nn.DecodingSession.traced_layout`, checked at every step): when those
    move (a per-row engine's prefill, a fork into per-row engines) they are captured anew.
    """

    def __init__(self, model: nn.Module, session: DecodingSession):
        self.session = session
        self.forward = compiled_forward(model, session)
        self.device = session.device
        self.positions = session.device_positions(session.all_rows)
        self._graphs: dict[tuple, _StepGraph] = {}
        self._layout: tuple[int, ...] = ()
        self._ran: set[tuple] = set()  # keys run once (compiled) in this decoder
        self.captures = 0  # CUDA graphs captured (one per key while the buffers stay put)
        self._pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None

    def __call__(self, plan: TracedPlan, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pool is None or plan.key not in self._ran:
            self._ran.add(plan.key)
            output = self.forward(ids, self.positions)
            if plan.key:  # (most steps schedule nothing: the forward is the step)
                args = plan.host_args().to(self.device, non_blocking=True)
                compiled_schedule(plan.key, self.device)(args, plan.buffers)
            return output
        layout = self.session.traced_layout
        if layout != self._layout:  # buffers moved (a per-row engine's prefill): graphs anew
            self._graphs.clear()
            self._layout = layout
        if plan.key not in self._graphs:
            schedule = compiled_schedule(plan.key, self.device)
            self._graphs[plan.key] = _StepGraph(
                self.forward, self.positions, schedule, plan, ids, self._pool
            )
            self.captures += 1
        return self._graphs[plan.key].replay(ids, plan)


class _StepGraph:
    """One CUDA graph of a compiled step for one plan key: the forward on a static ids buffer
    and the scheduled work on a static args buffer (captured, not run, at construction)."""

    def __init__(
        self,
        forward: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        positions: torch.Tensor,
        schedule: Callable[[torch.Tensor, tuple], None],
        plan: TracedPlan,
        ids: torch.Tensor,
        pool: tuple,
    ):
        self.ids = torch.empty_like(ids)
        self.args = torch.empty(len(plan.args), dtype=torch.long, device=ids.device)
        self.graph = torch.cuda.CUDAGraph()
        # Captured on a side stream after the work queued so far, as torch.cuda.graph does, but
        # without its device synchronization, garbage collection and emptied cache (tens of ms
        # for a graph that a decoder captures mid-generation); "thread_local": the deamortized
        # worker thread may queue its jobs meanwhile.
        stream, current = torch.cuda.Stream(ids.device), torch.cuda.current_stream(ids.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            self.graph.capture_begin(pool, capture_error_mode="thread_local")
            try:
                self.outputs = forward(self.ids, positions)
                if plan.key:
                    schedule(self.args, plan.buffers)
            finally:
                self.graph.capture_end()
        current.wait_stream(stream)

    def replay(self, ids: torch.Tensor, plan: TracedPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """The step for ``ids`` ``(batch, 1)`` and ``plan`` (of this graph's key): its outputs,
        copied out of the graph's memory (the next replay overwrites them)."""
        self.ids.copy_(ids)
        if plan.args:
            self.args.copy_(plan.host_args(), non_blocking=True)
        self.graph.replay()
        return tuple(t.clone() for t in self.outputs)


def compiled_forward(
    model: nn.Module, session: DecodingSession
) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The compiled forward of ``model`` over one token of every row of ``session``: ids
    ``(batch, 1)`` and the session's device positions ``(batch,)`` to the last logits
    ``(batch, vocab)`` and their argmax ``(batch,)``, the positions of the rows that stepped
    one on (:func:`~futurefill.nn.session.advance_positions`): with the engines' own places,
    all a step without scheduled work does.

    One per model and (engine method and options, batch size, dtype, device), kept on the model,
    each a function with a code object of its own (:func:`_own_code`)."""
    dtype = getattr(next(model.parameters(), None), "dtype", None)
    options = tuple(sorted(session.engine_options.items()))
    key = (session.method, options, session.batch_size, dtype, session.device)
    steps = model.__dict__.setdefault("_futurefill_compiled_steps", {})  # not a state-dict key
    if key not in steps:

        def token_step(
            ids: torch.Tensor, positions: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            logits = last_logits(model(ids), ids.shape[0])
            advance_positions(positions)
            return logits, logits.argmax(dim=-1)

        steps[key] = _compile(token_step, session.device, CPU_COMPILE_OPTIONS)
    return steps[key]


#: The compiled scheduled work of every unit of a plan key seen in this process (a unit names
#: its shapes, dtypes and device; lengths are dynamic).
_UNITS: dict[tuple, Callable[[torch.Tensor, tuple], None]] = {}


def compiled_schedule(key: tuple, device: torch.device) -> Callable[[torch.Tensor, tuple], None]:
    """The scheduled work of a plan ``key`` (:func:`~futurefill.nn.session.schedule_function`),
    each of its units compiled once for the process, whatever other units a step combines it
    with: rows at their own positions combine level sizes, and only the combinations are
    many."""

    def compiled_unit(unit: tuple) -> Callable[[torch.Tensor, tuple], None]:
        if unit not in _UNITS:
            _UNITS[unit] = _compile(unit_function(unit), device)
        return _UNITS[unit]

    return schedule_function(key, compiled_unit)


def _compile(function: Callable, device: torch.device, cpu_options: dict | None = None) -> Callable:
    """``torch.compile(function)`` with a code object of its own: dynamo keeps graphs, and
    counts them against its recompile limit (8), per code object, and runs every call past the
    limit eagerly (one function for every step would reach it with the eighth such
    combination in a process). On the CPU with inductor ``cpu_options`` where this inductor has
    the CPU matrix-vector pass they ask for (:data:`CPU_COMPILE_OPTIONS`; options patch the
    config at every call: only the forward, whose products they speed up, takes them)."""
    own = types.FunctionType(
        function.__code__.replace(),  # equal, but another object
        function.__globals__,
        function.__name__,
        closure=function.__closure__,
    )
    if cpu_options and device.type == "cpu" and _inductor_decomposes_cpu_mm():
        return torch.compile(own, dynamic=False, options=cpu_options)
    return torch.compile(own, dynamic=False)


def _inductor_decomposes_cpu_mm() -> bool:
    """Whether this torch's inductor has the CPU case of its ``decompose_mm_pass``."""
    try:
        from torch._inductor.fx_passes import decompose_mem_bound_mm
    except ImportError:
        return False
    return hasattr(decompose_mem_bound_mm, "CPU_MAX_FIRST_DIMENSION_DECOMPOSITION")


def last_logits(output: Any, batch: int) -> torch.Tensor:
    """The last position's logits ``(batch, vocab)`` of a model's output ``(batch, n, vocab)``
    (a tensor, or an object with ``.logits``)."""
    return all_logits(output, batch)[:, -1]


def all_logits(output: Any, batch: int) -> torch.Tensor:
    """The logits ``(batch, n, vocab)`` of a model's output (a tensor, or an object with
    ``.logits``), or a TypeError saying what decoding needs."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(
            "decoding needs a model whose forward returns logits (batch, length, vocab_size), or "
            f"an object with .logits; got {shape}"
        )
    return logits


def check_input_ids(input_ids: Any, device: torch.device) -> torch.Tensor:
    """``input_ids`` as a LongTensor ``(batch, length)`` on ``device``, or a clear error."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if (
        input_ids.dtype.is_floating_point
        or input_ids.dtype.is_complex
        or input_ids.dtype == torch.bool
    ):
        raise TypeError(f"input_ids must have an integer dtype (torch.long), got {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(
            f"input_ids must have shape (batch, length) with batch, length >= 1, "
            f"got {tuple(input_ids.shape)}"
        )
    if input_ids.device != device:
        raise ValueError(f"input_ids are on {input_ids.device}, the model on {device}")
    return input_ids.long()


def check_prompt_lengths(
    prompt_lengths: Sequence[int] | torch.Tensor | None, batch: int, width: int
) -> list[int]:
    """Each prompt's length (default ``width``), checked to be ints in ``[1, width]``."""
    if prompt_lengths is None:
        return [width] * batch
    if isinstance(prompt_lengths, torch.Tensor):
        if prompt_lengths.dtype.is_floating_point or prompt_lengths.dtype == torch.bool:
            raise TypeError(f"prompt_lengths must be integers, got dtype {prompt_lengths.dtype}")
        if prompt_lengths.dim() != 1:
            raise ValueError(
                f"prompt_lengths must be 1-D (batch,), got shape {tuple(prompt_lengths.shape)}"
            )
        prompt_lengths = prompt_lengths.tolist()
    lengths = list(prompt_lengths)
    if len(lengths) != batch:
        raise ValueError(f"prompt_lengths has {len(lengths)} entries, input_ids has batch {batch}")
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"prompt_lengths must hold ints, got {type(length).__name__}")
        if not 1 <= length <= width:
            raise ValueError(
                f"prompt_lengths must be in [1, input_ids.shape[1]={width}], got {length}"
            )
    return lengths
