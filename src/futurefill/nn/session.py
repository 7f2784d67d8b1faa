"""Decoding sessions: the state of every futurefill.nn module of a model, for one batch.

Outside a session a :class:`DecodingModule` is an ordinary module: its forward maps a whole
sequence, by FFT, with autograd. Inside one, the same forward consumes the *next chunk* of the
sequence and keeps what the rest will need (online convolution engines, short-conv histories)
in the module::

    with futurefill.decoding(model, batch_size=2, max_len=1024, method="continuous") as session:
        logits = model(prompt_ids)            # ids (2, P): the first chunk, one parallel pass
        logits = model(next_ids[:, None])     # ids (2, 1): one more position per sequence
        session.position, session.nbytes      # positions consumed; bytes held by the state
        session.reset()                       # new sequences, same session

Position-wise layers (Linear, norms, activations, gating) need nothing: they see the chunk. The
session allocates each module's state when it opens (short-conv histories) or at the module's first
chunk (engines, sized by the filter taps materialised once at ``max_len``), never per step.

Two modes serve :func:`futurefill.generate`: ``session.padded(valid)`` (left padding kept out of
every convolution, so ragged prompts prefill in one pass) and ``session.traced_steps()`` with
``session.advance()`` (one-position chunks as tensor operations alone, for ``torch.compile``;
the host advances positions and runs what they schedule).

Every module checks its chunk before its state changes: the session's batch size, room left
before ``max_len``, and the same dtype and device as the session's first chunk (a model cast or
moved during a session gets an error saying so). Since every module of a model sees a chunk of
the same length, the first module to run raises before any state has moved. An exception raised
inside the model's forward for another reason may leave modules at different positions: call
``session.reset()`` after it.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

import torch
from torch import nn

from futurefill.checks import check_int
from futurefill.online import ScheduledWork, check_engine_options, run_scheduled


class _Chunk(threading.local):
    """What :func:`positions` reads, per thread: the first position of every row of the chunk
    the model in a session is running now (``start``: a list of ints, turned into a tensor only
    when asked; in compiled steps the session's position tensor), or None outside one."""

    start: list[int] | torch.Tensor | None = None
    # A packed chunk's: the stepping rows' positions, and the first of the prompt piece.
    tokens: tuple[list[int], int] | None = None


_CHUNK = _Chunk()


def positions(x: torch.Tensor) -> torch.Tensor:
    """The absolute position of every element of the current chunk ``x`` ``(batch, length,
    ...)``, a LongTensor ``(batch, length)``: ``arange(length)`` outside a decoding session;
    inside one, each row's own positions (counted from its first real token: left padding is
    at 0), with rows at independent positions too, and in compiled steps (from a tensor the
    session updates). Call it from the model's forward (rotary embeddings, say)."""
    if _CHUNK.tokens is not None:  # a packed chunk (DecodingSession.packing): one row of tokens
        steps, first = _CHUNK.tokens
        piece = range(first, first + x.shape[1] - len(steps))
        return torch.tensor([*steps, *piece], device=x.device)[None]
    steps = torch.arange(x.shape[1], device=x.device)
    start = _CHUNK.start
    if start is None:
        return steps.expand(x.shape[0], -1)
    start = torch.as_tensor(start, device=x.device)
    return (start[:, None] + steps).clamp(min=0)


__all__ = [
    "DecodingModule",
    "DecodingSession",
    "ModuleState",
    "decoding",
    "decoding_max_len",
    "positions",
]


class ModuleState(ABC):
    """What one module keeps between the chunks of a session; subclass it for a layer with
    decoding state of its own kind (docs/extension.md has the contract and a worked example).

    Parameters
    ----------
    session : DecodingSession
    name : str
        The module's qualified name in the model (for error messages).
    """

    def __init__(self, session: DecodingSession, name: str):
        self.session = session
        self.name = name or "the model"
        self.dtype: torch.dtype | None = None  # of the inputs, fixed by the first chunk
        self.device: torch.device | None = None
        self._position = 0
        self._row_positions = [0] * session.batch_size  # with independent rows

    def check_input(self, x: torch.Tensor, module: nn.Module) -> None:
        """Raise unless ``x`` ``(batch, length, ...)`` continues this session: same dtype and
        device as its first chunk, the session's batch size (the selected rows' count, with
        independent rows), and room left for its length in every row."""
        if self.dtype is not None and (x.dtype != self.dtype or x.device != self.device):
            raise RuntimeError(
                f"{type(module).__name__} {self.name!r} started this decoding session with "
                f"{self.dtype} inputs on {self.device} and now gets {x.dtype} on {x.device}: the "
                "model's dtype or device changed during the session; open a new session"
            )
        rows = self.session.rows
        batch = self.session.batch_size if rows is None else len(rows)
        if x.shape[0] != batch:
            what = f"batch_size={batch}" if rows is None else f"{batch} selected rows"
            raise ValueError(
                f"{type(module).__name__} {self.name!r} got a batch of {x.shape[0]}; the decoding "
                f"session is for {what}"
            )
        position = self.position if rows is None else max(map(self.row_position, rows))
        if position + x.shape[1] > self.session.max_len:
            raise ValueError(
                f"{type(module).__name__} {self.name!r} is at position {position} of the "
                f"session's max_len={self.session.max_len}: no room for {x.shape[1]} more; call "
                "session.reset() or open a session with a larger max_len"
            )
        self.dtype, self.device = x.dtype, x.device  # fixed by the first chunk accepted

    @property
    def position(self) -> int:
        """Positions consumed so far."""
        return self._position

    def run_packed(
        self, forward: Callable[..., torch.Tensor], *chunks: torch.Tensor
    ) -> torch.Tensor:
        """``forward`` (the module's) over a packed chunk (:meth:`DecodingSession.packing`):
        ``chunks`` ``(1, R + n, ...)`` hold one token for each stepping row, then ``n`` tokens
        of the prompt row; ``forward`` runs for the steps, then for the prompt piece, each with
        its rows selected, and the outputs are packed the same way, ``(1, R + n, ...)``."""
        session = self.session
        packed, session.packed = session.packed, None
        rows, row = packed
        try:
            with session.selecting(rows):
                steps = forward(*(c[0, : len(rows)].unsqueeze(1) for c in chunks))
            with session.selecting([row]):
                piece = forward(*(c[:, len(rows) :] for c in chunks))
        finally:
            session.packed = packed
        return torch.cat([steps.transpose(0, 1), piece], dim=1)

    def consumed(self, n: int) -> None:
        """Count a chunk of ``n`` positions (outside compiled steps, whose positions
        :meth:`advance` or :meth:`advance_rows` count): the session's, and with independent
        rows each selected row's."""
        self._position += n
        for row in self.session.rows or ():
            self._row_positions[row] += n

    def restart_positions(self, rows: list[int] | None = None) -> None:
        """``rows`` (default: every row, and the session's position) back to position 0: for
        :meth:`reset` and :meth:`reset_rows`, beside clearing the state itself."""
        if rows is None:
            self._position = 0
            rows = range(len(self._row_positions))
        for row in rows:
            self._row_positions[row] = 0

    # With independent rows (``session.independent_rows``) every row has a position of its own,
    # and these three replace ``position``, ``reset`` and ``advance`` for the rows given. A state
    # that supports them implements ``reset_rows`` (clearing those rows of its own state): the
    # base refuses, so that a state written for lockstep batches cannot serve rows silently.

    def row_position(self, row: int) -> int:
        """Positions consumed so far by ``row``."""
        return self._row_positions[row]

    def reset_rows(self, rows: list[int]) -> None:
        """Those rows back to position 0 (their state cleared, :meth:`restart_positions`), the
        others untouched."""
        raise NotImplementedError(f"{type(self).__name__} keeps no rows at their own positions")

    def advance_rows(self, rows: list[int]) -> list[ScheduledWork | None]:
        """After a compiled step: those rows one position on; the work each schedules (none by
        default)."""
        for row in rows:
            self._row_positions[row] += 1
        return []

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held."""

    @abstractmethod
    def reset(self) -> None:
        """Back to position 0 (keeping the allocations)."""

    @abstractmethod
    def prepare_traced(self) -> None:
        """Ready the state for compiled steps (:meth:`DecodingSession.traced_steps`)."""

    def traced_tensors(self) -> list[torch.Tensor]:
        """The tensors a compiled step reads or updates in place (see
        :meth:`DecodingSession.traced_steps`); none by default."""
        return []

    @abstractmethod
    def advance(self) -> ScheduledWork | None:
        """After a compiled step: the host's bookkeeping of one more position. Returns the work
        that position schedules (:class:`~futurefill.online.ScheduledWork`), which
        :meth:`DecodingSession.advance` runs batched with every other module's, or None."""


class RowSession:
    """One row of a session with independent rows, as the row's own module states see it: a
    batch of one at its own position, with the parent's length, method and mode."""

    batch_size = 1
    valid = None
    rows = None
    independent_rows = False

    def __init__(self, parent: DecodingSession):
        self.parent = parent
        self.max_len, self.method = parent.max_len, parent.method
        self.engine_options = parent.engine_options

    @property
    def traced(self) -> bool:
        return self.parent.traced

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DecodingModule(nn.Module, ABC):
    """Base class of the modules that keep their decoding state in a session.

    Parameters
    ----------
    max_len : int or None
        Longest sequence the module can process (its filter length); None: no limit.
    """

    #: Whether the module's forward handles packed chunks (:meth:`DecodingSession.packing`):
    #: it starts ``if self.packed: return self._state.run_packed(self.forward, *inputs)``.
    packs: bool = False

    def __init__(self, max_len: int | None):
        super().__init__()
        self.max_len = None if max_len is None else check_int(max_len, "max_len")
        self._state: ModuleState | None = None

    @property
    def packed(self) -> bool:
        """Whether the chunk the module gets now is packed (see :attr:`packs`)."""
        return self._state is not None and self._state.session.packed is not None

    @property
    def decoding(self) -> bool:
        """Whether the module is in a decoding session (its forward continues a sequence)."""
        return self._state is not None

    @abstractmethod
    def open_state(self, session: DecodingSession, name: str) -> ModuleState:
        """The state this module keeps in ``session`` (called once, when the session opens)."""


def no_decoding_modules(model: nn.Module) -> str:
    """Why ``model``, which has no :class:`DecodingModule`, cannot decode (an error message)."""
    return (
        f"{type(model).__name__} has no futurefill.nn modules, so it cannot decode: its time "
        "mixing must use futurefill.nn.LongConv, FilterBankConv or ShortConv"
    )


def decoding_max_len(model: nn.Module) -> int | None:
    """The longest sequence every futurefill.nn module of ``model`` accepts (None: no limit)."""
    limits = [m.max_len for m in model.modules() if isinstance(m, DecodingModule) and m.max_len]
    return min(limits) if limits else None


class DecodingSession:
    """Decoding state of a whole model; see the module docstring and :func:`decoding`.

    Attributes
    ----------
    batch_size, max_len, method : as given.
    engine_options : dict, ``epoch_len`` or ``tile_len`` for every engine.
    states : dict, module name -> :class:`ModuleState`.
    valid : bool Tensor (batch, n) or None, the padding mask inside :meth:`padded`.
    traced : bool, whether inside :meth:`traced_steps`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int,
        max_len: int | None = None,
        method: str = "continuous",
        independent_rows: bool = False,
        **engine_options: int | None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(independent_rows, bool):
            raise TypeError(f"independent_rows must be a bool, got {independent_rows!r}")
        modules = [(n, m) for n, m in model.named_modules() if isinstance(m, DecodingModule)]
        if not modules:
            raise ValueError(no_decoding_modules(model))
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
                raise RuntimeError(
                    f"{name!r} is already in a decoding session: close that one first"
                )
        self.method = method
        self.engine_options = checked
        self.valid: torch.Tensor | None = None  # see padded()
        self.traced = False  # see traced_steps()
        self.independent_rows = independent_rows
        self.rows: list[int] | None = None  # see selecting()
        self.packed: tuple[list[int], int] | None = None  # inside packing(): (rows, row)
        self.states = {name: module.open_state(self, name) for name, module in modules}
        self._modules = [module for _, module in modules]
        #: Whether every module of the model handles packed chunks (:meth:`packing`).
        self.packs = all(module.packs for module in self._modules)
        for module, state in zip(self._modules, self.states.values(), strict=True):
            module._state = state
        # positions(): each chunk's first positions, set around every call of the model; in
        # compiled steps a tensor advanced with the positions (the hooks are left out there).
        self._model = model
        # Work scheduled by eager steps of rows engines, run when the model's forward ends
        # (batched across modules and rows): the states that deferred some, and the work.
        self.deferred: set[ModuleState] = set()
        self._deferred_work: list[ScheduledWork] = []
        self._pad = [0] * self.batch_size  # left padding, per row
        self._position_tensor: torch.Tensor | None = None
        self._outer: list[tuple] = []  # what _CHUNK held outside each call
        self._hooks = self._add_hooks()
        self._open = True

    @property
    def position(self) -> int:
        """Positions consumed so far by every sequence (those of the first module)."""
        if self.independent_rows:
            raise RuntimeError("rows are at independent positions: see row_position(row)")
        return next(iter(self.states.values())).position

    def row_position(self, row: int) -> int:
        """Positions consumed so far by ``row`` (independent rows)."""
        return next(iter(self.states.values())).row_position(self._check_rows([row])[0])

    @contextlib.contextmanager
    def selecting(self, rows: list[int]) -> Iterator[DecodingSession]:
        """Inside, the chunks the model gets are those of ``rows`` (independent rows only), in
        that order: a chunk ``(len(rows), n, ...)`` continues each of those rows from its own
        position, and the other rows keep their state."""
        rows = self._check_rows(rows)
        self.rows = rows
        try:
            yield self
        finally:
            self.rows = None

    @contextlib.contextmanager
    def packing(self, rows: list[int], row: int) -> Iterator[DecodingSession]:
        """Inside, the model gets one packed chunk ``(1, len(rows) + n)``: a step of each of
        ``rows``, then the next ``n`` positions of ``row`` (a piece of its prompt), in one
        forward, so that the position-wise layers run once for both (independent rows; every
        module must handle it: :attr:`packs`). Each long convolution, short convolution and
        attention runs the two parts on their own rows; :func:`positions` gives each token's
        own position."""
        rows = self._check_rows([*rows, row])[:-1]
        if not self.packs:
            names = [type(m).__name__ for m in self._modules if not m.packs]
            raise ValueError(f"{', '.join(sorted(set(names)))} cannot take packed chunks")
        self.packed = (rows, row)
        try:
            yield self
        finally:
            self.packed = None

    def reset_rows(self, rows: list[int]) -> None:
        """Start new sequences in ``rows`` (independent rows): back to position 0, the other
        rows untouched."""
        rows = self._check_rows(rows)
        self.run_deferred()
        for state in self.states.values():
            state.reset_rows(rows)

    def _check_rows(self, rows: list[int]) -> list[int]:
        if not self.independent_rows:
            raise RuntimeError("rows are selected in a session with independent_rows=True only")
        rows = list(rows)
        if not rows or any(
            isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < self.batch_size
            for r in rows
        ):
            raise ValueError(f"rows must be ints in [0, {self.batch_size}), got {rows}")
        if len(set(rows)) != len(rows):
            raise ValueError(f"rows must be distinct, got {rows}")
        return rows

    def _add_hooks(self) -> tuple:
        return (
            self._model.register_forward_pre_hook(self._begin_chunk),
            self._model.register_forward_hook(self._end_chunk, always_call=True),
        )

    def _begin_chunk(self, module: nn.Module, args: tuple) -> None:
        """Before the model runs a chunk: its rows' first positions, for :func:`positions`
        (Python ints: no tensor work unless the model asks)."""
        self._outer.append((_CHUNK.start, _CHUNK.tokens))
        if self.packed is not None:
            rows, row = self.packed
            _CHUNK.start = None
            _CHUNK.tokens = ([*map(self.row_position, rows)], self.row_position(row))
            return
        if self.independent_rows:
            rows = self.rows if self.rows is not None else range(self.batch_size)
            start = [self.row_position(r) for r in rows]
        else:
            position = self.position
            if position == 0:  # a first chunk: its left padding, where there is one
                valid = self.valid
                self._pad = [0] * self.batch_size if valid is None else (~valid).sum(1).tolist()
            start = [position - pad for pad in self._pad]
        _CHUNK.start, _CHUNK.tokens = start, None

    def _end_chunk(self, module: nn.Module, args: tuple, output: object) -> None:
        _CHUNK.start, _CHUNK.tokens = self._outer.pop() if self._outer else (None, None)
        self.run_deferred()

    def defer(self, state: ModuleState, works: list[ScheduledWork]) -> None:
        """Run ``works`` (scheduled by ``state``'s step) when the model's forward ends, with every
        other module's: :meth:`run_deferred`. A state that finds itself in :attr:`deferred` at
        its next chunk (a forward that ended without the hook, or a module called alone) runs
        them first."""
        if works:
            self.deferred.add(state)
            self._deferred_work.extend(works)

    def run_deferred(self) -> None:
        """Run the deferred work, batched (:func:`~futurefill.online.run_scheduled`)."""
        if self._deferred_work:
            works, self._deferred_work = self._deferred_work, []
            self.deferred.clear()
            run_scheduled(works)

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = ()

    @property
    def nbytes(self) -> int:
        """Bytes held by every module's state (engines, histories)."""
        return sum(state.nbytes for state in self.states.values())

    @property
    def closed(self) -> bool:
        return not self._open

    @contextlib.contextmanager
    def padded(self, valid: torch.Tensor) -> Iterator[DecodingSession]:
        """Inside, the chunk the model gets holds padding where ``valid`` ``(batch, n)`` is False:
        every module sees zeros there in place of its input.

        Convolutions are the only time mixing, so padding that reaches none of them mixes into
        nothing: sequences left-padded to end together get exactly the outputs they would get
        alone (time invariance), in one parallel prefill of the whole batch.
        """
        if self.independent_rows:
            raise RuntimeError("with independent rows each row starts alone: no padding")
        if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.dim() != 2:
            raise TypeError("valid must be a 2-D bool tensor (batch, n)")
        if valid.shape[0] != self.batch_size:
            raise ValueError(f"valid has batch {valid.shape[0]}, the session {self.batch_size}")
        self.valid = valid
        try:
            yield self
        finally:
            self.valid = None

    @contextlib.contextmanager
    def traced_steps(self) -> Iterator[DecodingSession]:
        """Inside, a chunk of one position goes through every module by tensor operations alone,
        without checks or Python state changes, so that ``torch.compile`` can trace the model's
        whole per-token forward as one graph that never depends on the position; call
        :meth:`advance` after each such step (the host's part: positions, and the FFT levels
        that a tile's end schedules). Needs a first chunk (the engines), and float32 or float64
        (half precisions decode eagerly). On CUDA the states'
        tensors (:meth:`ModuleState.traced_tensors`) are marked static addresses, so that a CUDA
        graph of the step (``mode="reduce-overhead"``) updates them in place, unguarded: a new
        session re-records the graph, it does not recompile it. A model that reads
        :func:`positions` is called inside :meth:`traced_positions` there (the
        :class:`~futurefill.decoder.Decoder` does it)."""
        first = next(iter(self.states.values()))
        started = (
            any(first.row_position(r) for r in range(self.batch_size))
            if self.independent_rows
            else first.position
        )
        if not started:
            raise RuntimeError("traced steps need a first chunk: prefill the prompt first")
        self.run_deferred()
        for state in self.states.values():
            state.prepare_traced()
            for tensor in state.traced_tensors():
                if tensor.is_cuda:  # a CUDA graph may update it in place, at this address
                    torch._dynamo.mark_static_address(tensor, guard=False)
        # positions() in the graph: a tensor of every row's position, advanced in place.
        first = next(iter(self.states.values()))
        if self.independent_rows:
            start = [first.row_position(r) for r in range(self.batch_size)]
        else:
            start = [first.position] * self.batch_size
        device = next(self._model.parameters()).device
        start = [s - pad for s, pad in zip(start, self._pad, strict=True)]
        self._position_tensor = torch.tensor(start, device=device)
        if self._position_tensor.is_cuda:
            torch._dynamo.mark_static_address(self._position_tensor, guard=False)
        self._remove_hooks()  # a compiled step must not depend on this session's hooks
        self.traced = True
        try:
            yield self
        finally:
            self.traced = False
            self._position_tensor = None
            if self._open:
                self._hooks = self._add_hooks()

    @contextlib.contextmanager
    def traced_positions(self) -> Iterator[None]:
        """Around each call of the model inside :meth:`traced_steps` (the compiled step's): what
        :func:`positions` reads is every row's position, a tensor the session advances."""
        outer, _CHUNK.start = _CHUNK.start, self._position_tensor
        try:
            yield
        finally:
            _CHUNK.start = outer

    def advance(self, rows: list[int] | None = None) -> None:
        """After a compiled step (see :meth:`traced_steps`): every module one position on (with
        independent rows: ``rows``, whose chunk rows were live; the others' outputs were
        discarded), the work those positions schedule batched across modules and rows."""
        if not self.independent_rows:
            if self.position >= self.max_len:
                raise RuntimeError(f"cannot step past max_len={self.max_len}; call reset()")
            run_scheduled([state.advance() for state in self.states.values()])
            if self._position_tensor is not None:
                self._position_tensor += 1
            return
        rows = self._check_rows(rows if rows is not None else [])
        if max(map(self.row_position, rows)) >= self.max_len:
            raise RuntimeError(f"cannot step past max_len={self.max_len}; reset the row")
        run_scheduled([w for state in self.states.values() for w in state.advance_rows(rows)])
        if self._position_tensor is not None:
            self._position_tensor[rows] += 1

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(batch, n, ...)`` with zeros at the padding of :meth:`padded` (or ``x``)."""
        valid = self.valid
        if valid is None:
            return x
        if tuple(valid.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"the padding mask is {tuple(valid.shape)} but the chunk is {tuple(x.shape[:2])}"
            )
        return x.masked_fill(~valid.view(*valid.shape, *(1,) * (x.dim() - 2)), 0)

    def reset(self) -> None:
        """Start new sequences: every module back to position 0, allocations and filters kept."""
        self._deferred_work, self.deferred = [], set()
        for state in self.states.values():
            state.reset()

    def close(self) -> None:
        """Leave the session: the model's modules are ordinary modules again."""
        if not self._open:
            return
        self._open = False
        self._remove_hooks()
        for module in self._modules:
            module._state = None

    def __enter__(self) -> DecodingSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "independent rows" if self.independent_rows else f"position={self.position}"
        return (
            f"DecodingSession(modules={len(self.states)}, batch_size={self.batch_size}, "
            f"max_len={self.max_len}, method={self.method!r}, {where}, "
            f"nbytes={self.nbytes}{', closed' if self.closed else ''})"
        )


def decoding(
    model: nn.Module,
    *,
    batch_size: int,
    max_len: int | None = None,
    method: str = "continuous",
    independent_rows: bool = False,
    **engine_options: int | None,
) -> DecodingSession:
    """Open a decoding session over every futurefill.nn module of ``model``.

    Parameters
    ----------
    model : nn.Module
        Any module whose time mixing is futurefill.nn (``LongConv``, ``FilterBankConv``,
        ``ShortConv``); position-wise layers need nothing.
    batch_size : int
        Sequences decoded together; every chunk the model gets has this batch.
    max_len : int, optional
        Longest sequence (prompt plus generated); default and maximum the smallest ``max_len``
        of the model's modules.
    method : str
        The online convolution engine of every long convolution, one of
        :data:`futurefill.online.METHODS`.
    independent_rows : bool
        Every row at its own position: rows start (``reset_rows``, then a first chunk inside
        :meth:`~DecodingSession.selecting`), step together and restart on their own, each
        following its own FutureFill schedule (what a server needs). Default: one position for
        the whole batch.
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
    ...     y = torch.cat([conv(x[:, :6]), conv(x[:, 6:7]), conv(x[:, 7:])], dim=1)
    ...     position = session.position
    >>> position, bool(torch.allclose(y, conv(x)))
    (10, True)
    """
    return DecodingSession(
        model,
        batch_size=batch_size,
        max_len=max_len,
        method=method,
        independent_rows=independent_rows,
        **engine_options,
    )
