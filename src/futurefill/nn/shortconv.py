"""Short causal depthwise convolution (Hyena's and H3's kernel-3 filters, StripedHyena's 7- and
128-tap FIRs), with a history buffer.

``y[t] = bias + sum_{j=0..K-1} weight[:, j] * x[t - j]`` per channel, inputs before position 0
zero. The same code runs a whole sequence and a chunk of a decoding session: the chunk is
prefixed with the ``K - 1`` inputs before it (zeros outside a session or at its start). For a
few taps (K <= 4), tap j multiplies that sequence shifted by j (K fused multiply-adds, no
transposes, which cost less than a depthwise ``conv1d`` for one position:
docs/results/cpu-2core/tuning.md); for more, one depthwise ``conv1d`` over a chunk and one dot
per channel for a step (a ``conv1d`` of one output costs 40x that on a CPU). In a session the last
inputs of every row are kept in a ``(batch, K - 1, channels)`` buffer allocated when the session
opens: a FIR decodes exactly from any prompt length, one token included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from futurefill.nn.session import DecodingSession
from futurefill.nn.state import DecodingModule, ModuleState
from futurefill.online.base import tensor_bytes

__all__ = ["HistoryState", "ShortConv"]


class HistoryState(ModuleState):
    """The last ``kernel_size - 1`` inputs of every row of a :class:`ShortConv` in a session,
    ``(batch_size, kernel_size - 1, channels)``."""

    def __init__(self, session: DecodingSession, name: str, module: ShortConv):
        super().__init__(session, name)
        weight = module.weight
        self.history = torch.zeros(
            session.batch_size,
            module.kernel_size - 1,
            module.channels,
            dtype=weight.dtype,
            device=weight.device,
        )

    @property
    def nbytes(self) -> int:
        return tensor_bytes([self.history])

    def reset_rows(self, rows: Sequence[int]) -> None:
        self.history[list(rows)] = 0

    def save_row(self, row: int) -> list[torch.Tensor]:
        return [self.history[row].clone()]

    def load_rows(self, rows: Sequence[int], saved: list[torch.Tensor]) -> None:
        self.history[list(rows)] = saved[0]

    def traced_tensors(self) -> list[torch.Tensor]:
        return [self.history]

    def with_history(self, rows: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(len(rows), n, channels)`` after those rows' kept inputs, ``(len(rows), K - 1
        + n, channels)``; keeps the new last ones."""
        every = len(rows) == self.history.shape[0] and list(rows) == sorted(rows)
        history = self.history if every else self.history[list(rows)]  # in place: fixed shape
        joined = torch.cat([history, x], dim=1)
        kept = joined[:, joined.shape[1] - self.history.shape[1] :]
        if every:
            self.history.copy_(kept)
        else:
            self.history[list(rows)] = kept
        return joined


class ShortConv(DecodingModule):
    """Causal depthwise convolution with a short kernel, ``(batch, length, channels)`` to the same.

    Parameters
    ----------
    channels : int
    kernel_size : int
        Taps per channel; ``weight[:, j]`` multiplies the input ``j`` steps back.
    bias : bool
        Add a learned ``bias`` per channel (default True).
    """

    LOOP_TAPS = 4  # up to this many taps, multiply-adds; more, one conv1d

    def __init__(self, channels: int, kernel_size: int = 3, *, bias: bool = True):
        super().__init__(None)
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        bound = 1.0 / math.sqrt(kernel_size)  # nn.Conv1d's default for a depthwise kernel
        self.weight = nn.Parameter(torch.empty(channels, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound)) if bias else None

    def open_state(self, session: DecodingSession, name: str) -> HistoryState:
        return HistoryState(session, name, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, channels) -> (batch, length, channels)``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"x must have shape (batch, length, channels={self.channels}), got {shape}"
            )
        if self._state is None:
            before = x.new_zeros(x.shape[0], self.kernel_size - 1, x.shape[2])
            return self._taps(x, torch.cat([before, x], dim=1))
        return self._state.run(self._feed, x)

    def _feed(self, rows: Sequence[int], x: torch.Tensor) -> torch.Tensor:
        """In a session: ``x`` ``(len(rows), n, channels)`` continues those rows."""
        state = self._state
        if not state.session.chunk.traced:
            state.check_dtype(x, self)
            state.session.touch()
        return self._taps(x, state.with_history(rows, x))

    def _taps(self, x: torch.Tensor, joined: torch.Tensor) -> torch.Tensor:
        """The output for ``x`` ``(batch, n, channels)`` and ``joined`` ``(batch, K - 1 + n,
        channels)``, ``x`` after the inputs before it."""
        length, before = x.shape[1], self.kernel_size - 1
        if self.kernel_size > self.LOOP_TAPS and length == 1:  # a step: one dot per channel
            y = torch.einsum("bkc,ck->bc", joined, self.weight.flip(-1)).unsqueeze(1)
            return y if self.bias is None else y + self.bias
        if self.kernel_size > self.LOOP_TAPS:  # conv1d correlates: the taps reversed
            taps = self.weight.flip(-1).unsqueeze(1)  # (channels, 1, K)
            y = F.conv1d(joined.transpose(1, 2), taps, self.bias, groups=self.channels)
            return y.transpose(1, 2)
        w = self.weight
        y = w[:, 0] * x if self.bias is None else torch.addcmul(self.bias, w[:, 0], x)
        for j in range(1, self.kernel_size):  # taps, not channels: K - 1 = 2 in Hyena
            y = y.addcmul(self.weight[:, j], joined[:, before - j : before - j + length])
        return y

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"channels={self.channels}, kernel_size={self.kernel_size}, bias={bias}"
