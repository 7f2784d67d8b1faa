"""Online causal convolution: one output per input, exactly the offline result.

``OnlineConv(h, method=...)`` picks an engine:

===========  ==========================  =========================  ==============================
method       time for L steps            memory (after P prompt)    notes
===========  ==========================  =========================  ==============================
naive        O(L^2)                      O(P + K)                   direct dot product per step
epoched      O(L^1.5 sqrt(log L))        O(P + K) inputs + O(E)     epoch_len E ~ sqrt(L log L)
continuous   O(L log^2 L)                O(K)                       tile_len b0 below FFT levels
===========  ==========================  =========================  ==============================

(K = max_len - P, the steps left after a prompt of length P.)
"""

from __future__ import annotations

import torch

from futurefill.online.base import OnlineConvEngine
from futurefill.online.continuous import ContinuousConv, default_tile_len
from futurefill.online.epoched import EpochedConv, default_epoch_len
from futurefill.online.naive import NaiveConv

__all__ = [
    "METHODS",
    "ContinuousConv",
    "EpochedConv",
    "NaiveConv",
    "OnlineConv",
    "OnlineConvEngine",
    "default_epoch_len",
    "default_tile_len",
]

METHODS = ("naive", "epoched", "continuous")


def make_engine(
    h: torch.Tensor,
    method: str = "continuous",
    *,
    max_len: int | None = None,
    batch_size: int = 1,
    epoch_len: int | None = None,
    tile_len: int | None = None,
) -> OnlineConvEngine:
    """Build the engine for ``method``; the options of other methods must be left as None."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if epoch_len is not None and method != "epoched":
        raise ValueError(f"epoch_len applies to method='epoched' only, not {method!r}")
    if tile_len is not None and method != "continuous":
        raise ValueError(f"tile_len applies to method='continuous' only, not {method!r}")
    if method == "naive":
        return NaiveConv(h, max_len=max_len, batch_size=batch_size)
    if method == "epoched":
        return EpochedConv(h, max_len=max_len, batch_size=batch_size, epoch_len=epoch_len)
    return ContinuousConv(h, max_len=max_len, batch_size=batch_size, tile_len=tile_len)


class OnlineConv:
    """Online causal convolution of every channel with its own filter, one step at a time.

    Produces exactly (to rounding) what :func:`futurefill.causal_conv` produces offline, while
    inputs arrive one at a time (each may depend on the previous output).

    Parameters
    ----------
    h : Tensor, shape (channels, filter_len)
        The filters; the engine computes on h's device and in h's dtype (half precisions in
        float32). Inputs must match both.
    method : {"continuous", "epoched", "naive"}
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
        # Bound directly: the per-token call goes straight to the engine.
        self.step = self.engine.step
        self.prefill = self.engine.prefill
        self.reset = self.engine.reset

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
