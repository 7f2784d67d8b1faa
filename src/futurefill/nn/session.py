"""Decoding sessions: the state of every futurefill.nn module of a model, for ``batch_size`` rows,
each row a sequence at its own position.

Outside a session a :class:`DecodingModule` is an ordinary module: its forward maps a whole
sequence, by FFT, with autograd. Inside one, the model is called through the session, and the
same forward continues the rows it is given from their own positions, keeping what the rest
will need (online convolution engines, short-conv histories, key/value caches)::

    with futurefill.decoding(model, batch_size=2, max_len=1024) as session:
        logits = session.feed(prompt_ids)              # (2, P): both rows from position 0
        logits = session.feed(next_ids[:, None])       # (2, 1): one more position each
        logits = session.feed(ids, rows=[1])           # (1, n): row 1 alone, n positions on
        session.positions, session.nbytes              # (2,) positions; bytes of the state
        session.reset_rows([0])                        # row 0 starts anew; row 1 goes on
        session.fork(1, [0])                           # row 0 goes on as a copy of row 1
        saved = session.snapshot(1)                    # row 1's state, kept aside
        session.restore([0, 1], saved)                 # both rows go on from it again

One positions tensor, ``session.positions`` ``(batch_size,)``, says where every row is; nothing
else keeps a row's position. A call feeds a set of rows (``rows``, default all) ``n`` positions
each, or, packed (:meth:`DecodingSession.feed_packed`), one position of each of ``rows`` and
then ``n`` of one more row in one forward of ``(1, len(rows) + n)`` tokens. The session checks a
call once, before the model runs (rows, room before ``max_len``, batch), counts the positions
after it and then runs the work the steps scheduled (FFT levels of finished tiles), batched
across layers and rows. A compiled step (:meth:`DecodingSession.feed_traced`) runs every row by
tensor operations alone, and the work their positions schedule as a graph runs it
(:class:`TracedPlan`: tensor operations keyed by what they do, fed where as a device tensor);
the host counts the rows that really stepped.

Position-wise layers need nothing: they see the chunk. A module that needs positions (rotary
embeddings) asks :func:`positions`. Each module's state implements one rows contract
(:class:`ModuleState`: feed rows, a traced step of every row, reset rows, bytes), documented for
authors of new modules in docs/extension.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from futurefill.checks import check_int
from futurefill.nn.state import Chunk, DecodingModule, ModuleState
from futurefill.online import (
    ENGINES,
    ScheduledWork,
    TracedWork,
    Worker,
    check_engine_options,
    run_scheduled,
)

__all__ = [
    "DecodingSession",
    "RowSnapshot",
    "TracedPlan",
    "advance_positions",
    "decoding",
    "decoding_max_len",
    "positions",
    "traced_step",
]

_SESSION = "_futurefill_session"  # the attribute that ties every module of a model to its session


def positions(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The absolute position of every token of ``x`` ``(batch, length, ...)``, the input of
    ``module`` (any module of a model): a LongTensor ``(batch, length)``, ``arange(length)``
    outside a decoding session; inside one, each token's own position in its own row (a packed
    chunk's too), also in compiled steps. Call it from the model's forward (rotary embeddings,
    say): ``positions(self, x)``."""
    session = module.__dict__.get(_SESSION)
    if session is None:
        return torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
    return session.chunk_positions(x.device)


def decoding_max_len(model: nn.Module) -> int | None:
    """The longest sequence every futurefill.nn module of ``model`` accepts (None: no limit)."""
    limits = [m.max_len for m in model.modules() if isinstance(m, DecodingModule) and m.max_len]
    return min(limits) if limits else None


@dataclass(frozen=True, eq=False)
class RowSnapshot:
    """One row's decoding state at ``position`` (:meth:`DecodingSession.snapshot`), a copy that
    the session's calls never change; :meth:`DecodingSession.restore` puts it back into any
    rows of the session that took it, as often as wanted.

    position : int
    states : dict, module name -> what its state saved (:meth:`ModuleState.save_row`)
    nbytes : int, bytes of its tensors (a per-row engine's copy counted whole, with the filter
        tables it shares: an upper bound)
    """

    position: int
    states: dict[str, list]
    nbytes: int
    origin: object  # the token of the session that took it


@dataclass(frozen=True, eq=False)
class TracedPlan:
    """What a compiled step of ``rows`` does after the model's forward over every row
    (:meth:`DecodingSession.feed_traced`), split as a graph of the step needs it.

    key : tuple, *what*: for each group of engines whose work runs batched, its unit ``(run,
        group, pattern, len(args), engines)`` (:class:`~futurefill.online.TracedWork`), each
        compiled once (:func:`unit_function`); one CUDA graph per key serves
        every position. ``()``: the step schedules nothing (most steps).
    args : list of int, *where*: each group's args; the graph reads them from a device
        LongTensor ``(len(args),)``.
    buffers : for each group, its engines' buffers (what :func:`schedule_function` of ``key``
        updates in place).
    host : the states whose :meth:`ModuleState.advance` runs after the step, on the host.
    """

    key: tuple
    args: list[int]
    buffers: tuple
    host: tuple

    def host_args(self) -> torch.Tensor:
        """``args`` as a LongTensor on the host, in pinned memory where CUDA is available, so
        that copying it to the device neither waits nor is overwritten before it is done
        (``copy_(..., non_blocking=True)``: the pinned allocator keeps it until the copy
        ends)."""
        host = torch.tensor(self.args, dtype=torch.long)
        return host.pin_memory() if torch.cuda.is_available() else host

    def run(self, device: torch.device) -> None:
        """The scheduled work on ``device``, uncompiled: :func:`schedule_function` of the key."""
        if self.key:
            args = self.host_args().to(device, non_blocking=True)
            schedule_function(self.key)(args, self.buffers)


def unit_function(unit: tuple) -> Callable[[torch.Tensor, tuple], None]:
    """One unit of a plan key, ``(run, group, pattern, count, engines)``: a function of its
    args ``(count,)`` and its engines' buffers, by tensor operations alone (what
    ``torch.compile`` traces once per unit)."""
    run, _, pattern, _, _ = unit

    def work(args: torch.Tensor, engines: tuple) -> None:
        run(engines, pattern, args)

    return work


def schedule_function(
    key: tuple, unit: Callable[[tuple], Callable[[torch.Tensor, tuple], None]] = unit_function
) -> Callable[[torch.Tensor, tuple], None]:
    """The scheduled work of a compiled step whose plan has ``key`` (:class:`TracedPlan`), a
    function of ``(args, buffers)``: each unit's function (made by ``unit``, by default
    :func:`unit_function`; a compiled step passes one that compiles it once) on its slice of
    the args and its engines' buffers."""
    works = [(unit(u), u[3]) for u in key]

    def schedule(args: torch.Tensor, buffers: tuple) -> None:
        offset = 0
        for (work, count), engines in zip(works, buffers, strict=True):
            work(args[offset : offset + count], engines)
            offset += count

    return schedule


def advance_positions(positions: torch.Tensor) -> None:
    """The end of a compiled step of every row, in its graph: the rows that stepped one position
    on. Those are the rows past position 0 (the others are free: a compiled step serves
    started rows beside free ones, :meth:`DecodingSession.feed_traced`)."""
    positions.add_(positions > 0)


def traced_step(model: nn.Module) -> Callable[..., Any]:
    """The step :meth:`DecodingSession.feed_traced` takes, uncompiled: ``model``'s forward over
    every row, the positions advanced (:func:`advance_positions`), then the plan's scheduled
    work. What a compiled step's graph does, eagerly (a :class:`~futurefill.decoder.Decoder`
    with ``compile=True`` compiles it)."""
    session = model.__dict__[_SESSION]

    def step(plan: TracedPlan, *inputs: Any) -> Any:
        output = model(*inputs)
        advance_positions(session.device_positions(session.all_rows))
        plan.run(session.device)
        return output

    return step


class DecodingSession(contextlib.AbstractContextManager):
    """Decoding state of a whole model for ``batch_size`` rows; see the module docstring and
    :func:`decoding`.

    Attributes
    ----------
    batch_size, max_len, method : as given.
    engine_options : dict, ``epoch_len`` or ``tile_len`` for every engine.
    positions : LongTensor (batch_size,) on the CPU, each row's positions consumed.
    states : dict, module name -> :class:`ModuleState`.
    chunk : :class:`Chunk` or None, what the model's current call holds.
    calls : int, calls of the model so far.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int,
        max_len: int | None = None,
        method: str = "continuous",
        **engine_options: int | None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        modules = [(n, m) for n, m in model.named_modules() if isinstance(m, DecodingModule)]
        if not modules:
            raise ValueError(
                f"{type(model).__name__} has no futurefill.nn modules, so it cannot decode: its "
                "time mixing must use futurefill.nn.LongConv, FilterBankConv or ShortConv"
            )
        self.batch_size = check_int(batch_size, "batch_size")
        limit = decoding_max_len(model)
        if max_len is None:
            if limit is None:
                raise ValueError("max_len is required: no module of the model has a length limit")
            max_len = limit
        self.max_len = check_int(max_len, "max_len")
        if limit is not None and self.max_len > limit:
            name = next(n for n, m in modules if m.max_len == limit)
            raise ValueError(
                f"max_len {self.max_len} exceeds the model's max_len {limit} (the filter length "
                f"of {name!r})"
            )
        checked = check_engine_options(method, engine_options)  # the method's name too
        for name, module in modules:
            if module.decoding:
                raise RuntimeError(f"{name!r} is already in a decoding session: close that one")
        self.method, self.engine_options = method, checked
        self.model = model
        weight = next(model.parameters(), None)
        self.device = weight.device if weight is not None else torch.device("cpu")
        # Ordinary tensors, updated in place in and out of inference mode, as every state's.
        with torch.inference_mode(False):
            self.positions = torch.zeros(self.batch_size, dtype=torch.long)
            # The positions on the model's device, for tensor code (attention, rotary, compiled
            # steps): a mirror of ``positions`` kept by the same updates, at a fixed address.
            self._device_positions = torch.zeros(
                self.batch_size, dtype=torch.long, device=self.device
            )
        self.all_rows = tuple(range(self.batch_size))
        self.chunk: Chunk | None = None
        self._traced_chunk = Chunk(self.all_rows, 1, traced=True)  # one object: graphs guard it
        self.calls = 0
        self.worker = _worker_for(method)
        with torch.inference_mode(False):  # states allocated now: ordinary tensors too
            self.states = {name: module.open_state(self, name) for name, module in modules}
        self._modules = [module for _, module in modules]
        for module, state in zip(self._modules, self.states.values(), strict=True):
            module._state = state
        for module in model.modules():  # what positions(module, x) reads
            module.__dict__[_SESSION] = self
        self._deferred: list[ScheduledWork | None] = []
        self._touched = False  # whether a state moved during the current call
        self._traced_ready = False
        self._on_host: tuple[ModuleState, ...] = ()  # states by where a compiled step's work runs
        self._in_graph: tuple[ModuleState, ...] = ()
        self._open = True
        self._token = object()  # what its snapshots name it by

    # ----------------------------------------------------------------- calls of the model

    def feed(self, *inputs: Any, rows: Sequence[int] | None = None) -> Any:
        """``model(*inputs)`` continuing ``rows`` (default every row, in order): ``inputs[0]``
        ``(len(rows), n, ...)``, each row ``n`` positions on from its own position. Every call
        of the session runs in ``torch.inference_mode`` (its outputs are inference tensors);
        the states are ordinary tensors, so resets and calls may come in or out of it."""
        rows = self.all_rows if rows is None else self._check_rows(rows)
        batch, n = _batch_and_length(inputs)
        if batch != len(rows):
            what = "batch_size" if rows == self.all_rows else "rows given"
            raise ValueError(f"the chunk has a batch of {batch}; {what}={len(rows)}")
        self._check_room(rows, n)
        return self._call(Chunk(rows, n), inputs)

    def feed_packed(self, *inputs: Any, rows: Sequence[int], piece_row: int) -> Any:
        """``model(*inputs)`` over one packed chunk ``inputs[0]`` ``(1, len(rows) + n, ...)``: one
        position of each of ``rows``, then the next ``n`` of ``piece_row``, in one forward (the
        position-wise layers run once for both)."""
        checked = self._check_rows([*rows, piece_row])
        rows, piece_row = checked[:-1], checked[-1]
        batch, length = _batch_and_length(inputs)
        if batch != 1 or length <= len(rows):
            raise ValueError(
                f"a packed chunk is (1, {len(rows)} + n) with n >= 1, got ({batch}, {length})"
            )
        self._check_room(rows, 1)
        self._check_room((piece_row,), length - len(rows))
        return self._call(Chunk(rows, length - len(rows), piece_row), inputs)

    def feed_traced(self, step: Callable[..., Any], *inputs: Any, rows: Sequence[int]) -> Any:
        """``step(plan, *inputs)``: the model's forward over one position of every row
        (``inputs[0]`` ``(batch_size, 1, ...)``), the device positions of ``rows`` one on
        (:func:`advance_positions`) and the work the :class:`TracedPlan` ``plan`` of ``rows``
        schedules, by tensor operations alone (a compiled step, or :func:`traced_step`); then
        the host counts ``rows``. Every row of ``rows`` must have started (position > 0), every
        other row must be free (position 0): their outputs are meaningless and their states
        received the step's input (they are reset when they start)."""
        rows = self._check_rows(rows)
        if _batch_and_length(inputs) != (self.batch_size, 1):
            raise ValueError(
                f"a compiled step takes one position of every row, ({self.batch_size}, 1, ...); "
                f"got {tuple(inputs[0].shape)}"
            )
        self._check_room(rows, 1)
        if not self.steps_started_rows(rows):
            raise ValueError(
                f"a compiled step steps the started rows and only those: rows {list(rows)} at "
                f"positions {self.positions.tolist()}"
            )
        if not self._traced_ready:
            self._prepare_traced()
        plan = self._plan(rows)
        return self._call(self._traced_chunk, (plan, *inputs), step=step, counted=rows, plan=plan)

    def steps_started_rows(self, rows: Sequence[int]) -> bool:
        """Whether ``rows`` are exactly the started rows (past position 0): what a compiled step
        of every row (:meth:`feed_traced`) may serve, the others free."""
        stepping = set(rows)
        return all((p > 0) == (r in stepping) for r, p in enumerate(self.positions.tolist()))

    @property
    def traced_layout(self) -> tuple[int, ...]:
        """The addresses of every tensor a compiled step reads or updates
        (:meth:`ModuleState.traced_tensors`): a CUDA graph of the step is valid while they stay
        the same."""
        tensors = [t for state in self.states.values() for t in state.traced_tensors()]
        return tuple(t.data_ptr() for t in [self._device_positions, *tensors])

    def _plan(self, rows: tuple[int, ...]) -> TracedPlan:
        """The :class:`TracedPlan` of a compiled step of ``rows``: each state's graph form of
        its work, grouped by engines that run batched, or its host part."""
        groups: dict[Hashable, list[TracedWork]] = {}
        for state in self._in_graph:
            for work in state.traced_work(rows):
                groups.setdefault((work.run, work.group, work.pattern, work.args), []).append(work)
        key, args = [], []
        for (run, group, pattern, work_args), works in groups.items():
            key.append((run, group, pattern, len(work_args), len(works)))
            args += work_args
        buffers = tuple(tuple(work.buffers for work in works) for works in groups.values())
        return TracedPlan(tuple(key), args, buffers, self._on_host)

    def _call(
        self,
        chunk: Chunk,
        inputs: tuple,
        step: Callable[..., Any] | None = None,
        counted: tuple[int, ...] | None = None,
        plan: TracedPlan | None = None,
    ) -> Any:
        if self.chunk is not None:
            raise RuntimeError("the model is already running a call of this session")
        self.chunk, self._touched, self.calls = chunk, False, self.calls + 1
        if not chunk.traced:
            self._traced_ready = False  # an eager call moves states a compiled step reads
        try:
            with torch.inference_mode():  # decoding: no autograd graph through the states
                output = (step or self.model)(*inputs)
            if plan is not None:
                self._deferred += [w for s in plan.host for w in s.advance(counted)]
        except BaseException as error:
            touched = self._touched
            self.chunk, self._deferred = None, []
            if touched:  # some module had moved: the call's rows start anew, whole
                rows = [row for part, _ in chunk.parts() for row in part]
                self.reset_rows(rows)
                error.add_note(f"the rows {list(rows)} of the failed call were reset")
            raise
        self.chunk = None
        if counted is not None:  # (the step advanced the device positions)
            if len(counted) == self.batch_size:
                self.positions += 1
            else:
                self.positions[list(counted)] += 1
        else:
            for rows, n in chunk.parts():
                self._count(rows, n)
        self.run_deferred()
        return output

    def _count(self, rows: Sequence[int], n: int) -> None:
        if len(rows) == self.batch_size:
            self.positions += n
            self._device_positions += n
        else:
            index = list(rows)
            self.positions[index] += n
            self._device_positions[index] += n

    def touch(self) -> None:
        """Called by a state about to change for the current call (so that a call that fails
        after it resets its rows)."""
        self._touched = True

    def defer(self, works: list[ScheduledWork | None]) -> None:
        """Run ``works`` (scheduled by a state's step) after the current call of the model,
        batched with every other module's."""
        self._deferred += works

    def run_deferred(self) -> None:
        """Run the deferred work, batched (:func:`~futurefill.online.run_scheduled`)."""
        if self._deferred:
            works, self._deferred = self._deferred, []
            run_scheduled(works)

    def chunk_positions(self, device: torch.device) -> torch.Tensor:
        """The positions of the current chunk's tokens, ``(batch, n)`` as the model's input
        (see :func:`positions`)."""
        chunk = self.chunk
        if chunk is None:
            raise RuntimeError("positions are asked outside a call of the session's model")
        if chunk.traced:
            return self._device_positions[:, None]
        starts = self.row_positions(chunk.rows)
        if chunk.piece_row is None:
            start = torch.tensor(starts, device=device)[:, None]
            return start + torch.arange(chunk.n, device=device)
        first = int(self.positions[chunk.piece_row])
        return torch.tensor([*starts, *range(first, first + chunk.n)], device=device)[None]

    def row_positions(self, rows: Sequence[int]) -> list[int]:
        """The positions of ``rows``, as ints."""
        positions = self.positions.tolist()
        return positions if tuple(rows) == self.all_rows else [positions[r] for r in rows]

    def device_positions(self, rows: Sequence[int]) -> torch.Tensor:
        """The positions of ``rows`` on the model's device (in a compiled step: every row's, the
        tensor the session advances in place)."""
        if tuple(rows) == self.all_rows:
            return self._device_positions
        return self._device_positions[list(rows)]

    # ----------------------------------------------------------------- life cycle

    def reset_rows(self, rows: Sequence[int]) -> None:
        """Start new sequences in ``rows``: back to position 0, the other rows untouched."""
        rows = self._check_rows(rows)
        self.run_deferred()
        for state in self.states.values():
            state.reset_rows(rows)
        self.positions[list(rows)] = 0
        self._device_positions[list(rows)] = 0
        self._traced_ready = False

    def reset(self) -> None:
        """Every row back to position 0, allocations and filters kept."""
        self.reset_rows(self.all_rows)

    def snapshot(self, row: int) -> RowSnapshot:
        """A copy of ``row``'s state at its position (every module's: convolution engines,
        short-convolution histories, key/value caches), O(what the row holds); the row goes on
        untouched. Work in flight (deamortized jobs) is finished first."""
        (row,) = self._check_rows([row])
        if not self._open:
            raise RuntimeError("the decoding session is closed")
        self.run_deferred()
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, kept for long
            states = {name: state.save_row(row) for name, state in self.states.items()}
        nbytes = sum(
            t.numel() * t.element_size() if isinstance(t, torch.Tensor) else t.nbytes
            for saved in states.values()
            for t in saved
        )
        return RowSnapshot(int(self.positions[row]), states, nbytes, self._token)

    def restore(self, rows: Sequence[int], snapshot: RowSnapshot) -> None:
        """``rows`` start anew as copies of ``snapshot`` (taken by this session): each goes on
        from its position exactly as the row it was taken from would have, on its own. The
        snapshot is not changed. A failure resets the rows."""
        rows = self._check_rows(rows)
        if not isinstance(snapshot, RowSnapshot) or snapshot.origin is not self._token:
            raise ValueError("snapshot: restore a RowSnapshot into the session that took it")
        if not self._open:
            raise RuntimeError("the decoding session is closed")
        self.reset_rows(rows)
        index = list(rows)
        self.positions[index] = snapshot.position
        self._device_positions[index] = snapshot.position
        try:
            with torch.inference_mode(False), torch.no_grad():
                for name, state in self.states.items():
                    state.load_rows(rows, snapshot.states[name])
        except BaseException as error:
            self.reset_rows(rows)
            error.add_note(f"the rows {index} were reset")
            raise

    def fork(self, source: int, targets: Sequence[int]) -> None:
        """``targets`` start anew as copies of row ``source`` (which goes on untouched): each
        then decodes exactly as ``source`` would from its position (sampling many
        continuations of one prompt for one prefill)."""
        targets = self._check_rows(targets)
        if source in targets:
            raise ValueError(f"targets must not hold the source row {source}")
        self.restore(targets, self.snapshot(source))

    @property
    def nbytes(self) -> int:
        """Bytes held by every module's state (engines, histories, caches)."""
        return sum(state.nbytes for state in self.states.values())

    @property
    def closed(self) -> bool:
        return not self._open

    def close(self) -> None:
        """Leave the session: the model's modules are ordinary modules again; the background
        worker (deamortized jobs), if any, is joined; the states are dropped (each refers to
        the session: without this their memory would wait for Python's cycle collector)."""
        if not self._open:
            return
        self._open = False
        for module in self._modules:
            module._state = None
        for module in self.model.modules():
            module.__dict__.pop(_SESSION, None)
        if self.worker is not None:
            self.worker.close()
        self.states, self._deferred = {}, []

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DecodingSession(modules={len(self.states)}, batch_size={self.batch_size}, "
            f"max_len={self.max_len}, method={self.method!r}, "
            f"positions={self.positions.tolist()}, nbytes={self.nbytes}"
            f"{', closed' if self.closed else ''})"
        )

    # ----------------------------------------------------------------- checks

    def _check_rows(self, rows: Sequence[int]) -> tuple[int, ...]:
        rows = tuple(rows)
        if not rows or any(
            isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < self.batch_size
            for r in rows
        ):
            raise ValueError(f"rows must be ints in [0, {self.batch_size}), got {list(rows)}")
        if len(set(rows)) != len(rows):
            raise ValueError(f"rows must be distinct, got {list(rows)}")
        return rows

    def _check_room(self, rows: Sequence[int], n: int) -> None:
        if not self._open:
            raise RuntimeError("the decoding session is closed")
        position = max(self.row_positions(rows))
        if position + n > self.max_len:
            raise ValueError(
                f"a row is at position {position} of the session's max_len={self.max_len}: no "
                f"room for {n} more; reset the row or open a session with a larger max_len"
            )

    def _prepare_traced(self) -> None:
        self.run_deferred()
        for state in self.states.values():
            state.prepare_traced()
        self._on_host = tuple(s for s in self.states.values() if s.advances_on_host)
        self._in_graph = tuple(s for s in self.states.values() if not s.advances_on_host)
        self._traced_ready = True


def _batch_and_length(inputs: tuple) -> tuple[int, int]:
    first = inputs[0] if inputs else None
    if not isinstance(first, torch.Tensor) or first.dim() < 2:
        shape = tuple(first.shape) if isinstance(first, torch.Tensor) else type(first).__name__
        raise ValueError(f"a session's call takes a (batch, length, ...) tensor first, got {shape}")
    if first.shape[1] < 1:
        raise ValueError("a session's call takes at least one position")
    return first.shape[0], first.shape[1]


def _worker_for(method: str) -> Worker | None:
    """The background worker the method's engines share in a session (joined at its close),
    or None for a method without one."""
    return Worker() if ENGINES[method].uses_worker else None


def decoding(
    model: nn.Module,
    *,
    batch_size: int,
    max_len: int | None = None,
    method: str = "continuous",
    **engine_options: int | None,
) -> DecodingSession:
    """Open a decoding session over every futurefill.nn module of ``model``.

    Parameters
    ----------
    model : nn.Module
        Any module whose time mixing is futurefill.nn (``LongConv``, ``FilterBankConv``,
        ``ShortConv``, ``CausalAttention``); position-wise layers need nothing.
    batch_size : int
        Rows: sequences decoded side by side, each at its own position.
    max_len : int, optional
        Longest sequence of a row (prompt plus generated); default and maximum the smallest
        ``max_len`` of the model's modules.
    method : str
        The online convolution engine of every long convolution, one of
        :data:`futurefill.online.METHODS`.
    **engine_options
        ``epoch_len`` (epoched) or ``tile_len`` (continuous, deamortized).

    Returns
    -------
    DecodingSession, a context manager: the modules decode until it closes.

    Examples
    --------
    >>> from futurefill.nn import LongConv
    >>> conv = LongConv(channels=4, max_len=16).double()
    >>> x = torch.randn(2, 10, 4, dtype=torch.float64)
    >>> with decoding(conv, batch_size=2) as session:
    ...     parts = [session.feed(x[:, :6]), session.feed(x[:, 6:7]), session.feed(x[:, 7:])]
    ...     y = torch.cat(parts, dim=1)
    ...     positions = session.positions.tolist()
    >>> positions, bool(torch.allclose(y, conv(x)))
    ([10, 10], True)
    """
    return DecodingSession(
        model, batch_size=batch_size, max_len=max_len, method=method, **engine_options
    )
