"""Long causal convolutions that decode through the online engines inside a session.

Shapes follow the sequence models (features last): input ``u`` is ``(batch, length, channels)``.

* :class:`LongConv`: depthwise, one filter per channel, ``y[t] = sum_{s<=t} h[:, t-s] u[s]``
  (plus ``skip ⊙ u[t]`` when asked); the filter an owned parameter (explicit) or computed by the
  caller's model (implicit: a callable ``length -> (channels, length)``).
* :class:`FilterBankConv`: every channel with every filter of one bank ``(filters, length)``
  (the STU's spectral filters), output ``(batch, length, channels, filters)``.

Outside a session ``forward`` is one FFT convolution (O(L log L), autograd through it). In a
session (:func:`futurefill.decoding`) it continues each row it is given from that row's
position, through the rows form of the session's method
(:func:`~futurefill.online.make_rows_engine`): a chunk of one position is one engine step
(O(log^2 L) amortised with ``method="continuous"``), a longer one the engine's ``extend`` (a
prompt, or the next piece of one: chunked prefill). The
filter is materialised once per session, at the session's ``max_len``, when the first chunk
arrives; the engine keeps a snapshot, so a weight changed during a session is seen by the next
session, not this one.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

from futurefill.fftconv import bank_conv, causal_conv
from futurefill.nn.session import DecodingSession
from futurefill.nn.state import DecodingModule, ModuleState
from futurefill.online import (
    ENGINES,
    METHODS,
    ModalFilter,
    RowsEngine,
    ScheduledWork,
    TracedWork,
    make_rows_engine,
)

__all__ = [
    "ConvModule",
    "ConvState",
    "FilterBankConv",
    "FilterLengthError",
    "LongConv",
    "decaying_filters",
]

FilterFn = Callable[[int], torch.Tensor]
ModalFn = Callable[[], ModalFilter]


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


def check_prefix(module: ConvModule, name: str, h: torch.Tensor, n: int) -> None:
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


class ConvState(ModuleState):
    """The online engine of one convolution module, in its rows form
    (:func:`~futurefill.online.make_rows_engine`: every row at its own position), built at the
    module's first chunk from the filter taps materialised once at the session's ``max_len``.
    Each row of the session is :attr:`~ConvModule.engine_rows_per_row` rows of the engine
    (FilterBankConv: one per channel)."""

    def __init__(self, session: DecodingSession, name: str, module: ConvModule):
        super().__init__(session, name)
        self.module = module
        self.engine: RowsEngine | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self.engine is None else self.engine.nbytes

    def reset_rows(self, rows: Sequence[int]) -> None:
        if self.engine is not None:
            positions = self.session.row_positions(rows)
            self.engine.reset_rows(*self._engine_rows(rows, positions))

    def save_row(self, row: int) -> list:
        if self.engine is None:
            return []
        engine_rows, positions = self._engine_rows([row])
        return self.engine.save_rows(engine_rows, positions[0])

    def load_rows(self, rows: Sequence[int], saved: list) -> None:
        if not saved:
            return
        for row in rows:
            engine_rows, positions = self._engine_rows([row])
            self.engine.load_rows(engine_rows, positions[0], saved)

    def prepare_traced(self) -> None:
        if self.engine is None:
            raise ValueError(f"{self.name!r}: compiled steps need a first chunk")
        try:
            self.engine.prepare_traced(self._engine_rows(self.session.all_rows)[1])
        except ValueError as error:
            raise ValueError(f"{self.name!r}: {error}") from None

    def traced_tensors(self) -> list[torch.Tensor]:
        return self.engine.traced_tensors()

    def advance(self, rows: Sequence[int]) -> list[ScheduledWork | None]:
        return self.engine.advance(*self._engine_rows(rows))

    @property
    def advances_on_host(self) -> bool:
        return not self.engine.schedules_in_graph

    def traced_work(self, rows: Sequence[int]) -> list[TracedWork]:
        return self.engine.traced_work(*self._engine_rows(rows))

    def feed(self, rows: Sequence[int], u: torch.Tensor) -> torch.Tensor:
        """The module's outputs ``(len(rows), n, ...)`` for the next ``n`` inputs ``u``
        ``(len(rows), n, channels)`` of ``rows``."""
        module, session = self.module, self.session
        if session.chunk.traced:  # a compiled step of every row: tensor operations only
            return module.from_engine_step(self.engine.step_traced(module.to_engine_step(u[:, 0])))
        module.check_input(u)
        self.check_dtype(u, module)
        if self.engine is None:
            if ENGINES[session.method].filter_form == "modal":
                h = module.modal_filter(self.name)
            else:
                h = module.filter_taps_checked(session.max_len, u.shape[1], self.name)
            with torch.inference_mode(False):  # ordinary buffers, reset in or out of it
                self.engine = make_rows_engine(  # (every engine keeps its own copy of h)
                    h,
                    session.method,
                    max_len=session.max_len,
                    batch_size=session.batch_size * module.engine_rows_per_row,
                    worker=session.worker,
                    **session.engine_options,
                )
        session.touch()
        positions = session.row_positions(rows)
        if u.shape[1] == 1:  # a step: its scheduled work runs after the model's call, batched
            y, work = self.engine.step(
                module.to_engine_step(u[:, 0]), *self._engine_rows(rows, positions)
            )
            session.defer(work)
            return module.from_engine_step(y)
        if len(set(positions)) == 1:  # rows at one position (a prompt of every row): together
            engine_rows, _ = self._engine_rows(rows, positions)
            y = self.engine.extend(module.to_engine(u), engine_rows, positions[0])
            return module.from_engine(y, len(rows))
        parts = [self.feed((row,), u[i : i + 1]) for i, row in enumerate(rows)]
        return torch.cat(parts)

    def _engine_rows(
        self, rows: Sequence[int], positions: Sequence[int] | None = None
    ) -> tuple[Sequence[int], Sequence[int]]:
        """The engine's rows of the session's ``rows`` and their positions (default the
        session's)."""
        if positions is None:
            positions = self.session.row_positions(rows)
        m = self.module.engine_rows_per_row
        if m == 1:
            return rows, positions
        engine_rows = [row * m + k for row in rows for k in range(m)]
        return engine_rows, [p for p in positions for _ in range(m)]


class ConvModule(DecodingModule):
    """What :class:`LongConv` and :class:`FilterBankConv` share: the filter (owned or given),
    the input checks, and the switch between the FFT and the session's engine."""

    def __init__(
        self,
        channels: int,
        max_len: int,
        filters: int,
        filter: FilterFn | None,
        weight: Callable[[], torch.Tensor],
        modal: ModalFn | None = None,
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
        if modal is not None and not callable(modal):
            raise TypeError(f"modal must be a callable () -> ModalFilter, got {modal!r}")
        object.__setattr__(self, "modal", modal)
        self.weight = nn.Parameter(weight()) if filter is None else None

    @torch.no_grad()
    def modal_filter(self, name: str) -> ModalFilter:
        """The filter in modal form (poles and residues), for method ``"modal"``: a ValueError
        naming the module where it has none."""
        if self.modal is None:
            raise ValueError(
                f"{type(self).__name__} {name!r} has no filter in modal form (poles and "
                "residues): method 'modal' decodes only those; use another method "
                f"({', '.join(METHODS)})"
            )
        modal = self.modal()
        if not isinstance(modal, ModalFilter) or modal.channels != self._filters:
            raise ValueError(
                f"{type(self).__name__}.modal() must return a ModalFilter of {self._filters} "
                f"channels, got {modal!r}"
            )
        return modal

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

    def open_state(self, session: DecodingSession, name: str) -> ConvState:
        return ConvState(session, name, self)

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
        return self._state.run(self._state.feed, u)

    # How the module's input maps to the engine's batch x filters (its channels) and back: each
    # row of the session is ``engine_rows_per_row`` rows of the engine. Depthwise: the identity,
    # up to layout.
    engine_rows_per_row = 1

    def to_engine(self, u: torch.Tensor) -> torch.Tensor:
        """``(batch, n, channels)`` -> the engine's ``(rows, filters, n)``."""
        return u.transpose(1, 2)

    def from_engine(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """The engine's ``(rows, filters, n)`` -> the module's output ``(batch, n, ...)``."""
        return y.transpose(1, 2)

    def to_engine_step(self, u_t: torch.Tensor) -> torch.Tensor:
        """``(batch, channels)`` -> the engine's ``(rows, filters)``."""
        return u_t

    def from_engine_step(self, y_t: torch.Tensor) -> torch.Tensor:
        """The engine's ``(rows, filters)`` -> the module's output ``(batch, 1, ...)``."""
        return y_t.unsqueeze(1)

    @abstractmethod
    def _offline(self, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The output for a whole sequence ``u`` ``(batch, length, channels)`` by FFT, with the
        filter taps ``h`` ``(filters, length)``."""


class LongConv(ConvModule):
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
    modal : callable, optional
        The same filter in modal form: ``modal()`` returns a
        :class:`~futurefill.online.ModalFilter` (poles and residues) whose taps ``filter``
        gives; a session with ``method="modal"`` then decodes it by its recurrence (O(state)
        per step). Only with ``filter``.
    skip : bool
        Add ``skip ⊙ u`` (Hyena's and H3's ``D`` term), ``skip`` a parameter initialised to ones.

    Examples
    --------
    >>> conv = LongConv(8, max_len=100, skip=True)
    >>> conv(torch.randn(2, 30, 8)).shape
    torch.Size([2, 30, 8])
    """

    def __init__(
        self,
        channels: int,
        max_len: int,
        *,
        filter: FilterFn | None = None,
        modal: ModalFn | None = None,
        skip: bool = False,
    ):
        if modal is not None and filter is None:
            raise ValueError("modal needs filter too (the taps of the same filter)")
        super().__init__(
            channels, max_len, channels, filter, lambda: decaying_filters(channels, max_len), modal
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


class FilterBankConv(ConvModule):
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
    def engine_rows_per_row(self) -> int:
        return self.channels  # every (sequence, channel) is a row that all the filters see

    def to_engine(self, u: torch.Tensor) -> torch.Tensor:
        batch, n, channels = u.shape
        return u.transpose(1, 2).reshape(batch * channels, 1, n).expand(-1, self.filters, -1)

    def from_engine(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        rows, filters, n = y.shape
        return y.reshape(batch, rows // batch, filters, n).permute(0, 3, 1, 2)

    def to_engine_step(self, u_t: torch.Tensor) -> torch.Tensor:
        return u_t.reshape(-1, 1).expand(-1, self.filters)

    def from_engine_step(self, y_t: torch.Tensor) -> torch.Tensor:
        return y_t.reshape(-1, 1, self.channels, self.filters)

    def extra_repr(self) -> str:
        kind = "explicit" if self.weight is not None else "implicit"
        return f"channels={self.channels}, max_len={self.max_len}, filters={self.filters}, {kind}"
