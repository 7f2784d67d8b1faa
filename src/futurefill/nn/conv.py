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
chunk is consumed step by step (exact, O(length) steps). The filter is materialised once per
session, at the session's ``max_len``, when the first chunk arrives; the engine keeps a snapshot,
so a weight changed during a session is seen by the next session, not this one.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable

import torch
from torch import nn

from futurefill.fftconv import bank_conv, causal_conv
from futurefill.nn.session import DecodingModule, DecodingSession, ModuleState
from futurefill.online import make_engine
from futurefill.online.base import OnlineConvEngine

__all__ = ["FilterBankConv", "LongConv", "decaying_filters"]

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


class EngineState(ModuleState):
    """The online engine of one convolution module, built at the module's first chunk."""

    def __init__(self, session: DecodingSession, name: str):
        super().__init__(session, name)
        self.engine: OnlineConvEngine | None = None

    @property
    def position(self) -> int:
        return 0 if self.engine is None else self.engine.position

    @property
    def nbytes(self) -> int:
        return 0 if self.engine is None else self.engine.nbytes

    def reset(self) -> None:
        if self.engine is not None:
            self.engine.reset()

    def consume(self, rows: torch.Tensor, module: _OnlineConv) -> torch.Tensor:
        """Outputs of the next chunk ``rows`` ``(engine batch, filters, n)``, same shape; the
        first chunk materialises the module's filter taps at the session's ``max_len``."""
        if self.engine is None:
            session = self.session
            with torch.no_grad():
                h = module.filter_taps(session.max_len)
            self.engine = make_engine(
                h,
                session.method,
                max_len=session.max_len,
                batch_size=rows.shape[0],
                **session.engine_options,
            )
        n = rows.shape[-1]
        if self.engine.position == 0 and n > 1:
            return self.engine.prefill(rows)
        if n == 1:
            return self.engine.step(rows[..., 0]).unsqueeze(-1)
        return torch.stack([self.engine.step(rows[..., i]) for i in range(n)], dim=-1)


class _OnlineConv(DecodingModule):
    """What :class:`LongConv` and :class:`FilterBankConv` share: the filter (owned or given),
    the input checks, and the switch between the FFT and the session's engine."""

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

    def open_state(self, session: DecodingSession, name: str) -> EngineState:
        return EngineState(session, name)

    def _check(self, u: torch.Tensor) -> None:
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
        if u.dim() != 3 or u.shape[-1] != self.channels:
            raise ValueError(
                f"u must have shape (batch, length, channels={self.channels}), got {tuple(u.shape)}"
            )
        if u.shape[1] > self.max_len:
            raise ValueError(f"length {u.shape[1]} exceeds the filter length {self.max_len}")

    def _convolve(self, u: torch.Tensor) -> torch.Tensor:
        """``(batch, length, channels)``: by FFT, or through the engine in a session."""
        self._check(u)
        x = u.transpose(1, 2)  # (batch, channels, length)
        if self._state is None:
            return self._offline(x, self.filter_taps(x.shape[-1]))
        self._state.check_input(x, self)
        rows = self._rows(x)
        y = self._state.consume(rows, self)
        return self._unrows(y, x.shape[0])

    @abstractmethod
    def _offline(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """The whole sequence ``x`` ``(batch, channels, length)`` by FFT with taps ``h``."""

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, channels, n)`` -> the engine's ``(rows, filters, n)``."""
        return x

    def _unrows(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        """The engine's ``(rows, filters, n)`` -> what :meth:`_offline` returns."""
        return y


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
        STU filters times a projection, ...), computed from the caller's own parameters. Without
        it the module owns ``weight`` ``(channels, max_len)`` (:func:`decaying_filters` init).
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

    def _offline(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return causal_conv(x, h).transpose(1, 2)

    def _unrows(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        return y.transpose(1, 2)

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
        ``filter(length)`` returns the bank ``(filters, >= length)``; without it the module
        owns ``weight`` ``(filters, max_len)``.
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

    def _offline(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return bank_conv(x, h).permute(0, 3, 1, 2)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, n = x.shape
        # Every (sequence, channel) is a row that all the filters see.
        return x.reshape(batch * channels, 1, n).expand(-1, self.filters, -1)

    def _unrows(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        rows, filters, n = y.shape
        return y.reshape(batch, rows // batch, filters, n).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        kind = "explicit" if self.weight is not None else "implicit"
        return f"channels={self.channels}, max_len={self.max_len}, filters={self.filters}, {kind}"
