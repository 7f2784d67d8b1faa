"""Online causal convolution: one output per input, exactly the offline result.

``OnlineConv(h, method=...)`` picks an engine:

===========  ==========================  =========================  ==============================
method       time for L steps            memory (after P prompt)    notes
===========  ==========================  =========================  ==============================
naive        O(L^2)                      O(P + K)                   direct dot product per step
epoched      O(L^1.5 sqrt(log L))        O(P + K) inputs + O(E)     epoch_len E ~ sqrt(L log L)
continuous   O(L log^2 L)                O(K)                       tile_len b0 below FFT levels
deamortized  O(L log^2 L), every step    O(K)                       continuous, its FFT jobs
             bounded (no stalls)                                    (2x the work) on a worker
                                                                    thread with b steps of slack
                                                                    each; tile_len b0
===========  ==========================  =========================  ==============================

(K = max_len - P, the steps left after a prompt of length P.)
"""

from __future__ import annotations

import torch

from futurefill.checks import check_int
from futurefill.online.base import OnlineConvEngine
from futurefill.online.continuous import (
    ContinuousConv,
    check_tile_len,
    default_tile_len,
    end_tiles,
)
from futurefill.online.deamortized import DeamortizedConv
from futurefill.online.epoched import EpochedConv, default_epoch_len
from futurefill.online.naive import NaiveConv

__all__ = [
    "METHODS",
    "ContinuousConv",
    "DeamortizedConv",
    "EpochedConv",
    "NaiveConv",
    "OnlineConv",
    "OnlineConvEngine",
    "check_engine_options",
    "default_epoch_len",
    "default_tile_len",
    "end_tiles",
]

METHODS = ("naive", "epoched", "continuous", "deamortized")


# The knobs and the methods that take them (see the table above).
ENGINE_OPTIONS = {"epoch_len": ("epoched",), "tile_len": ("continuous", "deamortized")}


def engine_options_text() -> str:
    """``epoch_len (epoched), tile_len (continuous/deamortized)``, for error messages."""
    return ", ".join(f"{name} ({'/'.join(takers)})" for name, takers in ENGINE_OPTIONS.items())


def check_engine_options(method: str, options: dict[str, object]) -> None:
    """Raise unless ``method`` is known and ``options`` are valid knobs of it.

    An unknown option name is a TypeError naming the known ones; a knob of another method, an
    ``epoch_len`` below 1 or a ``tile_len`` that is not a power of two is a ValueError.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    for name, value in options.items():
        if name not in ENGINE_OPTIONS:
            raise TypeError(
                f"unknown engine option {name!r}; the options are {engine_options_text()}"
            )
        if value is None:
            continue
        if method not in ENGINE_OPTIONS[name]:
            takers = " or ".join(f"method={m!r}" for m in ENGINE_OPTIONS[name])
            raise ValueError(f"{name} applies to {takers} only, not {method!r}")
        if name == "tile_len":
            check_tile_len(value)
        else:
            check_int(value, name)


def make_engine(
    h: torch.Tensor,
    method: str = "continuous",
    *,
    max_len: int | None = None,
    batch_size: int = 1,
    **options: int | None,
) -> OnlineConvEngine:
    """Build the engine for ``method`` with its knob (``epoch_len`` or ``tile_len``), if any."""
    check_engine_options(method, options)
    knobs = {name: value for name, value in options.items() if value is not None}
    if method == "naive":
        return NaiveConv(h, max_len=max_len, batch_size=batch_size)
    if method == "epoched":
        return EpochedConv(h, max_len=max_len, batch_size=batch_size, **knobs)
    if method == "deamortized":
        return DeamortizedConv(h, max_len=max_len, batch_size=batch_size, **knobs)
    return ContinuousConv(h, max_len=max_len, batch_size=batch_size, **knobs)


class OnlineConv:
    """Online causal convolution of every channel with its own filter, one step at a time.

    Produces exactly (to rounding) what :func:`futurefill.causal_conv` produces offline, while
    inputs arrive one at a time (each may depend on the previous output).

    Parameters
    ----------
    h : Tensor, shape (channels, filter_len)
        The filters; the engine computes on h's device and in h's dtype (half precisions in
        float32). Inputs must match both.
    method : {"continuous", "epoched", "naive", "deamortized"}
        The algorithm (see the module docstring for the trade-offs).
    max_len : int, optional
        Largest total length, prompt plus generated; default and maximum ``filter_len``.
    batch_size : int
        Number of sequences decoded together.
    epoch_len : int, optional
        Epoch length for ``method="epoched"`` (default ``round(sqrt(L log2 L))``).
    tile_len : int, optional
        Direct-computation tile for ``method="continuous"`` (a power of two).

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
        epoch_len: int | None = None,
        tile_len: int | None = None,
    ):
        self.method = method
        self.engine = make_engine(
            h,
            method,
            max_len=max_len,
            batch_size=batch_size,
            epoch_len=epoch_len,
            tile_len=tile_len,
        )

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
