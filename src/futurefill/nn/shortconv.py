"""Short causal depthwise convolution (Hyena's and H3's kernel-3 filters), with a history buffer.

``y[t] = bias + sum_{j=0..K-1} weight[:, j] * x[t - j]`` per channel, inputs before position 0
zero. The same code runs a whole sequence and a chunk of a decoding session: the chunk is
prefixed with the ``K - 1`` inputs before it (zeros outside a session or at its start), and tap
j multiplies that sequence shifted by j (K fused multiply-adds, no transposes, which cost less
than a depthwise ``conv1d`` for one position: docs/results/cpu-2core/tuning.md). In a session
the last inputs are kept in a ``(batch, K - 1, channels)`` buffer allocated when the
session opens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from futurefill.nn.session import DecodingModule, DecodingSession, ModuleState

__all__ = ["HistoryState", "ShortConv"]


class HistoryState(ModuleState):
    """The last ``kernel_size - 1`` inputs of a :class:`ShortConv` in a session."""

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
        return self.history.numel() * self.history.element_size()

    def reset(self) -> None:
        self.history.zero_()
        self.restart_positions()

    def reset_rows(self, rows: list[int]) -> None:
        self.history[rows] = 0
        self.restart_positions(rows)

    def extend(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(batch, n, channels)`` after the kept inputs; keeps the new last ones (and,
        outside a compiled step, counts them: there :meth:`advance` does). With independent
        rows, those of the selected rows (a compiled step selects every row)."""
        rows = self.session.rows
        if rows is None or (len(rows) == self.history.shape[0] and rows == sorted(rows)):
            history = self.history  # every row, in order: in place, fixed shape
        else:
            history = self.history[rows]
        extended = torch.cat([history, x], dim=1)  # (batch, K - 1 + n, channels)
        kept = extended[:, extended.shape[1] - self.history.shape[1] :]
        if history is self.history:
            self.history.copy_(kept)
        else:
            self.history[rows] = kept
        if not self.session.traced:
            self.consumed(x.shape[1])
        return extended

    def prepare_traced(self) -> None:
        """Nothing to prepare: the history's update is fixed-shape already."""

    def traced_tensors(self) -> list[torch.Tensor]:
        return [self.history]

    def advance(self) -> None:
        self._position += 1


class ShortConv(DecodingModule):
    """Causal depthwise convolution with a short kernel, ``(batch, length, channels)`` to the same.

    Parameters
    ----------
    channels : int
    kernel_size : int
        Taps per channel; ``weight[:, j]`` multiplies the input ``j`` steps back.
    """

    packs = True  # its forward takes packed chunks (DecodingSession.packing)

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__(None)
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        bound = 1.0 / math.sqrt(kernel_size)  # nn.Conv1d's default for a depthwise kernel
        self.weight = nn.Parameter(torch.empty(channels, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))

    def open_state(self, session: DecodingSession, name: str) -> HistoryState:
        return HistoryState(session, name, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, channels) -> (batch, length, channels)``."""
        if self.packed:
            return self._state.run_packed(self.forward, x)
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"x must have shape (batch, length, channels={self.channels}), got {shape}"
            )
        length, before = x.shape[1], self.kernel_size - 1
        if self._state is None:
            extended = torch.cat([x.new_zeros(x.shape[0], before, x.shape[2]), x], dim=1)
        else:
            if not self._state.session.traced:
                self._state.check_input(x, self)
                x = self._state.session.unpad(x)
            elif length != 1:  # static under torch.compile: no cost in the graph
                raise ValueError(f"traced steps take one position per chunk, got {length}")
            extended = self._state.extend(x)  # (batch, K - 1 + length, channels)
        y = torch.addcmul(self.bias, self.weight[:, 0], x)
        for j in range(1, self.kernel_size):  # taps, not channels: K - 1 = 2 in Hyena
            y = y.addcmul(self.weight[:, j], extended[:, before - j : before - j + length])
        return y

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"
