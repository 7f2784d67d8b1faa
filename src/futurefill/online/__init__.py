"""Online causal convolution: one output per input, exactly the offline result.

Every engine (a subclass of :class:`OnlineConvEngine`) is declared once, in :data:`ENGINES`,
under its ``method`` name, with its knobs (``options``) and a one-line ``summary``; the
command line's choices, the benchmarks, ``METHODS`` and the error messages read it.
:func:`methods_table` prints it::

    naive        O(L^2) time, O(P + K) memory: a direct dot product per step
    epoched      O(L^1.5 sqrt(log L)) time, ... epochs of E steps, each refilled by one FFT
    continuous   O(L log^2 L) time, O(K) memory: tiles of b0 steps computed directly, ...
    deamortized  O(L log^2 L) time, every step bounded, O(K) memory: ...
    modal        O(L S) time, O(S) memory per channel: the filter's own recurrence ...

(L = max_len; K = max_len - P, the steps left after a prompt of length P; S the poles of a
filter in modal form.) Adding an engine is one module and one :func:`register` call.

Every engine but ``modal`` decodes any filter from its taps; ``modal`` decodes the filters that
declare a modal form (:class:`ModalFilter`: poles and residues) by their recurrence, and those
filters decode with every other method too (their taps materialised).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from futurefill.online.base import OnlineConvEngine, ScheduledWork, run_scheduled
from futurefill.online.continuous import ContinuousConv, ContinuousRows, default_tile_len
from futurefill.online.deamortized import DeamortizedConv, Worker
from futurefill.online.epoched import EpochedConv, default_epoch_len
from futurefill.online.modal import ModalConv, ModalFilter, ModalRows
from futurefill.online.naive import NaiveConv
from futurefill.online.rows import PerRowEngines, RowsEngine, TracedWork

__all__ = [
    "ENGINES",
    "METHODS",
    "ContinuousConv",
    "ContinuousRows",
    "DeamortizedConv",
    "EpochedConv",
    "ModalConv",
    "ModalFilter",
    "ModalRows",
    "NaiveConv",
    "OnlineConv",
    "OnlineConvEngine",
    "PerRowEngines",
    "RowsEngine",
    "ScheduledWork",
    "TracedWork",
    "Worker",
    "check_engine_options",
    "default_epoch_len",
    "default_tile_len",
    "engine_options",
    "make_engine",
    "make_rows_engine",
    "methods_table",
    "register",
    "run_scheduled",
]

#: The registry: method name -> engine class.
ENGINES: dict[str, type[OnlineConvEngine]] = {}


class _MethodNames(Sequence[str]):
    """The registered methods that decode any filter from its taps, in registration order: a
    live, read-only view."""

    def _names(self) -> tuple[str, ...]:
        return tuple(name for name, engine in ENGINES.items() if engine.filter_form == "taps")

    def __getitem__(self, index):  # type: ignore[override]
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __repr__(self) -> str:
        return repr(self._names())


#: The methods that decode any filter (from its taps), in registration order: a live view of
#: :data:`ENGINES` without the methods of one filter form (``modal``).
METHODS: Sequence[str] = _MethodNames()


def register(engine: type[OnlineConvEngine]) -> type[OnlineConvEngine]:
    """Declare ``engine`` under its ``method`` name (usable as a class decorator)."""
    if not (isinstance(engine, type) and issubclass(engine, OnlineConvEngine)):
        raise TypeError(f"register takes an OnlineConvEngine subclass, got {engine!r}")
    name = engine.method
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{engine.__name__}.method must be a name, got {name!r}")
    if ENGINES.get(name, engine) is not engine:
        raise ValueError(f"method {name!r} is already registered to {ENGINES[name].__name__}")
    ENGINES[name] = engine
    return engine


for _engine in (NaiveConv, EpochedConv, ContinuousConv, DeamortizedConv, ModalConv):
    register(_engine)


def engine_options() -> dict[str, tuple[str, ...]]:
    """Every knob of a registered engine -> the methods that take it."""
    knobs: dict[str, tuple[str, ...]] = {}
    for name, engine in ENGINES.items():
        for knob in engine.options:
            knobs[knob] = (*knobs.get(knob, ()), name)
    return knobs


def engine_options_text() -> str:
    """``epoch_len (epoched), tile_len (continuous/deamortized)``, for error messages."""
    return ", ".join(f"{name} ({'/'.join(takers)})" for name, takers in engine_options().items())


def methods_table() -> str:
    """One line per registered method: its name and summary."""
    width = max(map(len, ENGINES))
    return "\n".join(f"{name:<{width}}  {engine.summary}" for name, engine in ENGINES.items())


def check_engine_options(method: str, options: dict[str, object]) -> dict[str, int]:
    """The knobs of ``method`` given in ``options`` (None values dropped), checked.

    An unknown method is a ValueError naming the registered ones; an unknown option name a
    TypeError naming the known ones; a knob of another method, or a value its checker refuses
    (an ``epoch_len`` below 1, a ``tile_len`` that is not a power of two), a ValueError.
    """
    if method not in ENGINES:
        raise ValueError(f"unknown method {method!r}; expected one of {tuple(ENGINES)}")
    knobs = engine_options()
    checked = {}
    for name, value in options.items():
        if name not in knobs:
            raise TypeError(
                f"unknown engine option {name!r}; the options are {engine_options_text()}"
            )
        if value is None:
            continue
        if method not in knobs[name]:
            takers = " or ".join(f"method={m!r}" for m in knobs[name])
            raise ValueError(f"{name} applies to {takers} only, not {method!r}")
        checked[name] = ENGINES[method].options[name](value)
    return checked


def make_engine(
    h: torch.Tensor,
    method: str = "continuous",
    *,
    max_len: int | None = None,
    batch_size: int = 1,
    **options: int | None,
) -> OnlineConvEngine:
    """The registered engine of ``method`` with its knobs (``epoch_len``, ``tile_len``, ...)."""
    knobs = check_engine_options(method, options)
    return ENGINES[method](h, max_len=max_len, batch_size=batch_size, **knobs)


def make_rows_engine(
    h: torch.Tensor,
    method: str = "continuous",
    *,
    max_len: int | None = None,
    batch_size: int = 1,
    worker: object = None,
    **options: int | None,
) -> RowsEngine:
    """The rows form (:class:`RowsEngine`: every row at its own position) of ``method``: its own
    (:attr:`OnlineConvEngine.rows_engine`) or one engine per row (:class:`PerRowEngines`).
    ``worker`` goes to the engines that use one (:attr:`OnlineConvEngine.uses_worker`)."""
    knobs = check_engine_options(method, options)
    engine = ENGINES[method]
    if engine.uses_worker:
        knobs["worker"] = worker
    if engine.rows_engine is not None:
        return engine.rows_engine(h, max_len=max_len, batch_size=batch_size, **knobs)
    return PerRowEngines(engine, h, max_len=max_len, batch_size=batch_size, **knobs)


class OnlineConv:
    """Online causal convolution of every channel with its own filter, one step at a time.

    Produces exactly (to rounding) what :func:`futurefill.causal_conv` produces offline, while
    inputs arrive one at a time (each may depend on the previous output).

    Parameters
    ----------
    h : Tensor, shape (channels, filter_len)
        The filters; the engine computes on h's device and in h's dtype (half precisions in
        float32). Inputs must match both.
    method : str
        A registered method (:data:`METHODS`; see the module docstring for the trade-offs).
    max_len : int, optional
        Largest total length, prompt plus generated; default and maximum ``filter_len``.
    batch_size : int
        Number of sequences decoded together.
    **options : int, optional
        The method's knobs: ``epoch_len`` (epoched), ``tile_len`` (continuous, deamortized).

    Examples
    --------
    >>> h = torch.randn(4, 100, dtype=torch.float64)
    >>> conv = OnlineConv(h, method="continuous", batch_size=2)
    >>> y_prompt = conv.prefill(torch.randn(2, 4, 10, dtype=torch.float64))  # (2, 4, 10)
    >>> y_10 = conv.step(torch.randn(2, 4, dtype=torch.float64))             # (2, 4)
    >>> y_11 = conv.step(torch.randn(2, 4, dtype=torch.float64), out=y_10)   # into y_10's memory
    >>> conv.position
    12
    """

    def __init__(
        self,
        h: torch.Tensor,
        *,
        method: str = "continuous",
        max_len: int | None = None,
        batch_size: int = 1,
        **options: int | None,
    ):
        self.method = method
        self.engine = make_engine(h, method, max_len=max_len, batch_size=batch_size, **options)

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        """Consume a prompt ``(batch_size, channels, P)`` at once; return its outputs, same
        shape. Must come first (see :meth:`OnlineConvEngine.prefill`)."""
        return self.engine.prefill(u)

    def step(self, u_t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Consume one input per sequence ``(batch_size, channels)``; return the next output,
        same shape, written into ``out`` when given (see :meth:`OnlineConvEngine.step`)."""
        return self.engine.step(u_t, out)

    def reset(self) -> None:
        """Forget the sequence: back to position 0, ready for ``prefill`` or ``step``."""
        self.engine.reset()

    @property
    def position(self) -> int:
        """Number of inputs seen so far (prompt included)."""
        return self.engine.position

    @property
    def nbytes(self) -> int:
        """Bytes held by the engine's buffers."""
        return self.engine.nbytes

    @property
    def max_len(self) -> int:
        return self.engine.max_len

    def __repr__(self) -> str:
        return f"OnlineConv(method={self.method!r}, engine={self.engine!r})"
