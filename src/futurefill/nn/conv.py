"""Long causal convolutions that decode through the online engines inside a session.

Shapes follow the sequence models (features last): input ``u`` is ``(batch, length, channels)``.

* :class:`LongConv`: depthwise, one filter per channel, ``y[t] = sum_{s<=t} h[:, t-s] u[s]``
  (plus ``skip ⊙ u[t]`` when asked); the filter an owned parameter (explicit) or computed by the
  caller's model (implicit: a callable ``length -> (channels, length)``).
* :class:`FilterBankConv`: every channel with every filter of one bank ``(filters, length)``
  (the STU's spectral filters), output ``(batch, length, channels, filters)``.

Outside a session ``forward`` is one FFT convolution (O(L log L), autograd through it). In a
session (:func:`futurefill.decoding`) it continues the sequence: the first chunk longer than one
position is a prefill (one FFT, the engine keeps only what the future needs), a chunk of one
position is one engine step (O(log^2 L) amortised with ``method="continuous"``), a later longer
chunk is the engine's ``extend`` (right after a prefill or another chunk, the next piece of the
prompt by one FFT pass: chunked prefill; elsewhere stepped through, exact either way). The
filter is materialised once per session, at the session's ``max_len``, when the first chunk
arrives; the engine keeps a snapshot, so a weight changed during a session is seen by the next
session, not this one.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from futurefill.fftconv import bank_conv, causal_conv
from futurefill.nn.session import DecodingModule, DecodingSession, ModuleState, RowSession
from futurefill.online import ENGINES, ContinuousRows, make_engine
from futurefill.online.base import OnlineConvEngine, ScheduledWork

__all__ = ["FilterBankConv", "FilterLengthError", "LongConv", "decaying_filters"]

FilterFn = Callable[[int], torch.Tensor]


def decaying_filters(channels: int, length: int) -> torch.Tensor:
    """Random unit-norm filters ``(channels, length)`` with log-spaced half-lives in [1, length].

    Gaussian noise under ``2^(-t / half_life_c)``, half-lives from 1 to ``length`` across channels
    (short and long memories side by side), each row scaled to unit L2 norm so the output has the
    input's scale. In the default dtype.
    """
    t = torch.arange(length, dtype=torch.float64)
    half_lives = torch.logspace(0.0, math.log10(max(length, 1)), channels, dtype=torch.float64)
    window = torch.exp2(-t / half_lives[:, None])  # (channels, length)
    h = torch.randn(channels, length, dtype=torch.float64) * window
    return (h / h.norm(dim=-1, keepdim=True)).to(torch.get_default_dtype())


# How far filter(n) may be from filter(N)[:, :n], relative to the taps' scale: rounding only.
PREFIX_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


class FilterLengthError(ValueError):
    """An implicit filter whose taps depend on the length asked for."""


def check_prefix(module: _OnlineConv, name: str, h: torch.Tensor, n: int) -> None:
    """Raise :class:`FilterLengthError` unless ``module.filter_taps(n)`` equals ``h[:, :n]`` (the
    taps at the session's ``max_len``), to the dtype's rounding: decoding evaluates an implicit
    filter once at ``max_len`` where the forward evaluates it at the input's length, and the two
    agree only if ``filter(n) == filter(N)[:, :n]``. One more evaluation, at a session's first
    chunk."""
    short = module.filter_taps(n)
    scale = float(h[:, :n].abs().max()) or 1.0
    error = float((short - h[:, :n]).abs().max()) / scale
    if not error <= PREFIX_RTOL.get(h.dtype, 3e-2):  # NaN included
        raise FilterLengthError(
            f"{type(module).__name__} {name!r}: its filter's taps depend on the length asked "
            f"for: filter({n}) differs from filter({h.shape[1]})[:, :{n}] by {error:.2g} of its "
            "scale, so decoding (which evaluates it once, at the session's max_len) would not "
            "match the forward; an implicit filter must satisfy filter(n) == filter(N)[:, :n] "
            "(evaluate it on a fixed grid of max_len positions and take the first n)"
        )


class EngineState(ModuleState):
    """The online engine of one convolution module, built at the module's first chunk. With
    independent rows, :attr:`engine` is the method's engine for rows at their own positions (one
    state for the batch: :attr:`~futurefill.online.OnlineConvEngine.rows_engine`), or, for a
    method without one, each row has a state of its own (:attr:`row_states`, each a batch of
    one), built together from one set of taps at the first chunk of any row."""

    def __init__(self, session: DecodingSession, name: str):
        super().__init__(session, name)
        self.engine: OnlineConvEngine | ContinuousRows | None = None
        self.step_shape: tuple[int, ...] = ()  # (batch, 1, channels), known at the first chunk
        self.row_states: list[EngineState] | None = None
        self._rows_per_sequence = 1  # engine rows of one sequence row (FilterBankConv: more)
        if session.independent_rows and ENGINES[session.method].rows_engine is None:
            row_session = RowSession(session)
            self.row_states = [
                EngineState(row_session, f"{name}[{row}]") for row in range(session.batch_size)
            ]

    @property
    def nbytes(self) -> int:
        if self.row_states is not None:
            return sum(state.nbytes for state in self.row_states)
        return 0 if self.engine is None else self.engine.nbytes

    def reset(self) -> None:
        for state in self.row_states or ():
            state.reset()
        if self.engine is not None:
            self.engine.reset()
        self.restart_positions()

    def row_position(self, row: int) -> int:
        if self.row_states is not None:
            return self.row_states[row].position
        return super().row_position(row)

    def reset_rows(self, rows: list[int]) -> None:
        if self.row_states is not None:
            for row in rows:
                self.row_states[row].reset()
            return
        if self.engine is not None:
            self.engine.reset_rows(self._engine_rows(rows))
        self.restart_positions(rows)

    def advance_rows(self, rows: list[int]) -> list[ScheduledWork | None]:
        if self.row_states is not None:
            return [self.row_states[row].advance() for row in rows]
        works = self.engine.advance(self._engine_rows(rows))
        super().advance_rows(rows)
        return works

    def prepare_traced(self) -> None:
        for state in self.row_states or [self]:
            if state.engine is None:
                raise ValueError(f"{state.name!r}: traced steps need a first chunk")
            try:
                state.engine.prepare_traced()
            except ValueError as error:
                raise ValueError(f"{state.name!r}: {error}") from None

    def traced_tensors(self) -> list[torch.Tensor]:
        return [t for state in self.row_states or [self] for t in state.engine.traced_tensors()]

    def advance(self) -> ScheduledWork | None:
        """One position on; the work the engine's position schedules (the session batches the
        work of every module)."""
        self._position += 1
        return self.engine.advance()

    def consume(self, u: torch.Tensor, module: _OnlineConv) -> torch.Tensor:
        """The module's outputs for the next chunk ``u`` ``(batch, n, channels)``; the first
        chunk materialises the module's filter taps at the session's ``max_len``. With
        independent rows, row i of ``u`` continues the selected row ``session.rows[i]``."""
        if self.row_states is not None:
            return self._consume_rows(u, module)
        if self.session.independent_rows:
            return self._consume_shared(u, module)
        if self.session.traced:  # inside a compiled step: tensor operations only
            if u.shape[1] != 1:  # static under torch.compile: no cost in the graph
                raise ValueError(f"traced steps take one position per chunk, got {u.shape[1]}")
            return module.step_output(self.engine.step_traced(module.step_rows(u[:, 0])))
        # The per-token case first, with the checks it needs inline (checked in full below).
        if (
            type(u) is torch.Tensor
            and u.shape == self.step_shape
            and u.dtype is self.dtype
            and self._position < self.session.max_len
            and self.session.valid is None
        ):
            self._position += 1
            return self._step(u[:, 0], module)
        module.check_input(u)
        self.check_input(u, module)
        u = self.session.unpad(u)
        if self.engine is None:
            h = module.filter_taps_checked(self.session.max_len, u.shape[1], self.name)
            self._build(h, u, module)
        n = u.shape[1]
        if n > 1:  # a prefill, or the next chunk of a prompt (chunked prefill)
            rows = module.sequence_rows(u)  # (rows, filters, n)
            y = module.sequence_output(self.engine.extend(rows), u.shape[0])
        else:  # one position: one engine step
            y = self._step(u[:, 0], module)
        self.consumed(n)
        return y

    def _step(self, u_t: torch.Tensor, module: _OnlineConv) -> torch.Tensor:
        """One position ``(batch, channels)`` through the engine: ``(batch, 1, ...)``."""
        return module.step_output(self.engine.step(module.step_rows(u_t)))

    def _build(self, h: torch.Tensor, u: torch.Tensor, module: _OnlineConv) -> None:
        """The engine for the filter taps ``h`` and chunks shaped like ``u``."""
        self.engine = make_engine(
            h,
            self.session.method,
            max_len=self.session.max_len,
            batch_size=u.shape[0] * module.rows_per_sequence,
            **self.session.engine_options,
        )
        self.step_shape = (u.shape[0], 1, u.shape[2])

    def _selected_rows(self, u: torch.Tensor, module: _OnlineConv) -> list[int]:
        rows = self.session.rows
        if rows is None:
            raise RuntimeError(
                f"{self.name!r}: with independent rows, say whose chunk this is: "
                "session.selecting(rows)"
            )
        if len(rows) != u.shape[0]:
            raise ValueError(
                f"{type(module).__name__} {self.name!r} got a batch of {u.shape[0]}; the decoding "
                f"session has {len(rows)} selected rows"
            )
        return rows

    def _engine_rows(self, rows: list[int]) -> list[int]:
        """The rows engine's rows of the session's ``rows``."""
        m = self._rows_per_sequence
        return rows if m == 1 else [row * m + k for row in rows for k in range(m)]

    def _consume_shared(self, u: torch.Tensor, module: _OnlineConv) -> torch.Tensor:
        """Independent rows in one rows engine: a step of the selected rows together, or a
        chunk (prompt) of each selected row."""
        session = self.session
        if session.traced:  # a compiled step of every row
            if u.shape[1] != 1:
                raise ValueError(f"traced steps take one position per chunk, got {u.shape[1]}")
            return module.step_output(self.engine.step_traced(module.step_rows(u[:, 0])))
        rows = self._selected_rows(u, module)
        module.check_input(u)
        self.check_input(u, module)
        if self.engine is None:
            h = module.filter_taps_checked(session.max_len, u.shape[1], self.name)
            self._rows_per_sequence = module.rows_per_sequence
            self.engine = ENGINES[session.method].rows_engine(
                h,
                max_len=session.max_len,
                batch_size=session.batch_size * module.rows_per_sequence,
                **session.engine_options,
            )
        if self in session.deferred:  # its earlier tile ends, still pending (no end hook since,
            session.run_deferred()  # or the steps' part of this packed chunk)
        if u.shape[1] == 1:  # a step: its tile ends run after the model's forward, batched
            engine_rows = self._engine_rows(rows)
            y = module.step_output(self.engine.push(module.step_rows(u[:, 0]), engine_rows))
            session.defer(self, self.engine.advance(engine_rows))
        else:
            parts = [
                module.sequence_output(
                    self.engine.extend(
                        module.sequence_rows(u[i : i + 1]), self._engine_rows([row])
                    ),
                    1,
                )
                for i, row in enumerate(rows)
            ]
            y = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.consumed(u.shape[1])
        return y

    def _consume_rows(self, u: torch.Tensor, module: _OnlineConv) -> torch.Tensor:
        rows = self._selected_rows(u, module)
        if self.row_states[0].engine is None:  # every row's engine, from one set of taps
            module.check_input(u)
            h = module.filter_taps_checked(self.session.max_len, u.shape[1], self.name)
            for state in self.row_states:
                state._build(h, u[:1], module)
        parts = [self.row_states[row].consume(u[i : i + 1], module) for i, row in enumerate(rows)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class _OnlineConv(DecodingModule):
    """What :class:`LongConv` and :class:`FilterBankConv` share: the filter (owned or given),
    the input checks, and the switch between the FFT and the session's engine."""

    packs = True  # its forward takes packed chunks (DecodingSession.packing)

    def __init__(
        self,
        channels: int,
        max_len: int,
        filters: int,
        filter: FilterFn | None,
        weight: Callable[[], torch.Tensor],
    ):
        super().__init__(max_len)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels
        self._filters = filters  # rows of the filter: channels (depthwise) or bank size
        if filter is not None and not callable(filter):
            raise TypeError(f"filter must be a callable length -> Tensor, got {filter!r}")
        # Not registered as a submodule: it belongs to the caller's model (no duplicate keys).
        object.__setattr__(self, "filter", filter)
        self.weight = nn.Parameter(weight()) if filter is None else None

    def filter_taps(self, length: int) -> torch.Tensor:
        """The first ``length`` taps of every filter: ``(filters, length)``."""
        if self.weight is not None:
            return self.weight[:, :length]
        h = self.filter(length)
        if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[0] != self._filters:
            shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
            raise ValueError(
                f"{type(self).__name__}.filter({length}) must return a tensor "
                f"({self._filters}, >= {length}), got {shape}"
            )
        if h.shape[1] < length:
            raise ValueError(
                f"{type(self).__name__}.filter({length}) returned {h.shape[1]} taps, fewer than "
                f"the {length} asked for"
            )
        return h[:, :length]

    @torch.no_grad()
    def filter_taps_checked(self, length: int, first_chunk: int, name: str) -> torch.Tensor:
        """The taps a session decodes with, ``(filters, length)``, an implicit filter's checked
        to be a prefix-consistent (:func:`check_prefix`, at the first chunk's length)."""
        h = self.filter_taps(length)
        checked = max(first_chunk, 2)  # one tap alone says little
        if self.filter is not None and checked < length:
            check_prefix(self, name, h, checked)
        return h

    def open_state(self, session: DecodingSession, name: str) -> EngineState:
        return EngineState(session, name)

    def check_input(self, u: torch.Tensor) -> None:
        """Raise unless ``u`` is ``(batch, length <= max_len, channels)``."""
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
        if u.dim() != 3 or u.shape[-1] != self.channels:
            raise ValueError(
                f"u must have shape (batch, length, channels={self.channels}), got {tuple(u.shape)}"
            )
        if u.shape[1] > self.max_len:
            raise ValueError(f"length {u.shape[1]} exceeds the filter length {self.max_len}")

    def _convolve(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` ``(batch, length, channels)``: by FFT, or through the engine in a session."""
        if self._state is None:
            self.check_input(u)
            return self._offline(u, self.filter_taps(u.shape[1]))
        if self.packed:
            return self._state.run_packed(self._convolve, u)
        return self._state.consume(u, self)

    # How the module's input maps to an engine's rows (batch) x filters (channels) and back; the
    # engine decodes ``batch * rows_per_sequence`` rows. Depthwise: the identity, up to layout.
    rows_per_sequence = 1

    def sequence_rows(self, u: torch.Tensor) -> torch.Tensor:
        """``(batch, n, channels)`` -> the engine's ``(rows, filters, n)``."""
        return u.transpose(1, 2)

    def sequence_output(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """The engine's ``(rows, filters, n)`` -> the module's output ``(batch, n, ...)``."""
        return y.transpose(1, 2)

    def step_rows(self, u_t: torch.Tensor) -> torch.Tensor:
        """``(batch, channels)`` -> the engine's ``(rows, filters)``."""
        return u_t

    def step_output(self, y_t: torch.Tensor) -> torch.Tensor:
        """The engine's ``(rows, filters)`` -> the module's output ``(batch, 1, ...)``."""
        return y_t.unsqueeze(1)

    @abstractmethod
    def _offline(self, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The output for a whole sequence ``u`` ``(batch, length, channels)`` by FFT, with the
        filter taps ``h`` ``(filters, length)``."""


class LongConv(_OnlineConv):
    """Depthwise long causal convolution, ``(batch, length, channels)`` to the same shape.

    ``y[:, t, c] = sum_{s<=t} h[c, t-s] u[:, s, c] (+ skip[c] u[:, t, c])``.

    Parameters
    ----------
    channels : int
    max_len : int
        Filter length: the longest sequence the module processes.
    filter : callable, optional
        Implicit filter: ``filter(length)`` returns ``(channels, >= length)`` taps (a Hyena FFN,
        STU filters times a projection, ...), computed from the caller's own parameters; its taps
        must not depend on the length asked for, ``filter(n) == filter(N)[:, :n]`` (checked at a
        session's first chunk: :class:`FilterLengthError`). Without it the module owns
        ``weight`` ``(channels, max_len)`` (:func:`decaying_filters` init).
    skip : bool
        Add ``skip ⊙ u`` (Hyena's and H3's ``D`` term), ``skip`` a parameter initialised to ones.

    Examples
    --------
    >>> conv = LongConv(8, max_len=100, skip=True)
    >>> conv(torch.randn(2, 30, 8)).shape
    torch.Size([2, 30, 8])
    """

    def __init__(
        self, channels: int, max_len: int, *, filter: FilterFn | None = None, skip: bool = False
    ):
        super().__init__(
            channels, max_len, channels, filter, lambda: decaying_filters(channels, max_len)
        )
        self.skip = nn.Parameter(torch.ones(channels)) if skip else None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``(batch, length, channels) -> (batch, length, channels)``."""
        y = self._convolve(u)
        return y if self.skip is None else torch.addcmul(y, self.skip, u)

    def _offline(self, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return causal_conv(u.transpose(1, 2), h).transpose(1, 2)

    def extra_repr(self) -> str:
        kind = "explicit" if self.weight is not None else "implicit"
        skip = self.skip is not None
        return f"channels={self.channels}, max_len={self.max_len}, {kind}, skip={skip}"


class FilterBankConv(_OnlineConv):
    """Every channel through every filter of one shared bank (the STU's full form).

    ``y[:, t, c, f] = sum_{s<=t} bank[f, t-s] u[:, s, c]``: ``(batch, length, channels)`` to
    ``(batch, length, channels, filters)``. The bank is held once, not once per channel: in a
    session the engine's channels are the filters and its batch is ``batch * channels``.

    Parameters
    ----------
    channels : int
    max_len : int
        Filter length.
    filters : int
        Size of the bank.
    filter : callable, optional
        ``filter(length)`` returns the bank ``(filters, >= length)``, with
        ``filter(n) == filter(N)[:, :n]``; without it the module owns ``weight``
        ``(filters, max_len)``.
    """

    def __init__(
        self, channels: int, max_len: int, filters: int, *, filter: FilterFn | None = None
    ):
        super().__init__(
            channels, max_len, filters, filter, lambda: decaying_filters(filters, max_len)
        )
        self.filters = filters

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``(batch, length, channels) -> (batch, length, channels, filters)``."""
        return self._convolve(u)

    def _offline(self, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return bank_conv(u.transpose(1, 2), h).permute(0, 3, 1, 2)

    @property
    def rows_per_sequence(self) -> int:
        return self.channels  # every (sequence, channel) is a row that all the filters see

    def sequence_rows(self, u: torch.Tensor) -> torch.Tensor:
        batch, n, channels = u.shape
        return u.transpose(1, 2).reshape(batch * channels, 1, n).expand(-1, self.filters, -1)

    def sequence_output(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        rows, filters, n = y.shape
        return y.reshape(batch, rows // batch, filters, n).permute(0, 3, 1, 2)

    def step_rows(self, u_t: torch.Tensor) -> torch.Tensor:
        return u_t.reshape(-1, 1).expand(-1, self.filters)

    def step_output(self, y_t: torch.Tensor) -> torch.Tensor:
        return y_t.reshape(-1, 1, self.channels, self.filters)

    def extra_repr(self) -> str:
        kind = "explicit" if self.weight is not None else "implicit"
        return f"channels={self.channels}, max_len={self.max_len}, filters={self.filters}, {kind}"
