"""Short causal depthwise convolution (Hyena's and H3's kernel-3 filters), with a history buffer.

``y[t] = bias + sum_{j=0..K-1} weight[:, j] * x[t - j]`` per channel, inputs before position 0
zero. The same code runs a whole sequence and a chunk of a decoding session: the chunk is
prefixed with the last ``K - 1`` inputs (zeros outside a session or at its start) and convolved
without padding; in a session those last inputs are kept in a ``(batch, channels, K - 1)``
buffer allocated when the session opens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from futurefill.nn.session import DecodingModule, DecodingSession, ModuleState

__all__ = ["ShortConv"]


class HistoryState(ModuleState):
    """The last ``kernel_size - 1`` inputs of a :class:`ShortConv` in a session."""

    def __init__(self, session: DecodingSession, name: str, module: ShortConv):
        super().__init__(session, name)
        weight = module.weight
        self.history = torch.zeros(
            session.batch_size,
            module.channels,
            module.kernel_size - 1,
            dtype=weight.dtype,
            device=weight.device,
        )
        self._position = 0

    @property
    def position(self) -> int:
        return self._position

    @property
    def nbytes(self) -> int:
        return self.history.numel() * self.history.element_size()

    def reset(self) -> None:
        self.history.zero_()
        self._position = 0

    def extend(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(batch, channels, n)`` prefixed with the kept inputs; keeps the new last ones."""
        if self.history.shape[-1] == 0:
            extended = x
        else:
            extended = torch.cat([self.history, x], dim=-1)
            self.history.copy_(extended[..., -self.history.shape[-1] :])
        self._position += x.shape[-1]
        return extended


class ShortConv(DecodingModule):
    """Causal depthwise convolution with a short kernel, ``(batch, length, channels)`` to the same.

    Parameters
    ----------
    channels : int
    kernel_size : int
        Taps per channel; ``weight[:, j]`` multiplies the input ``j`` steps back.
    """

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
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"x must have shape (batch, length, channels={self.channels}), got {shape}"
            )
        xc = x.transpose(1, 2)  # (batch, channels, length)
        if self._state is None:
            xc = F.pad(xc, (self.kernel_size - 1, 0))
        else:
            self._state.check_input(xc, self)
            xc = self._state.extend(xc)  # (batch, channels, K - 1 + length)
        kernel = self.weight.flip(-1).unsqueeze(1)  # (channels, 1, K): conv1d correlates
        return F.conv1d(xc, kernel, self.bias, groups=self.channels).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"
