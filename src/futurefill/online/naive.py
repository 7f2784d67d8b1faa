"""Naive cached convolution: the strongest direct method, O(t) work at step t.

Keeps every input in a preallocated channel-major history ``(channels, batch, max_len)`` and the
reversed filter ``(channels, max_len, 1)``; step t is one batched matrix-vector product over the
``t + 1`` inputs seen so far, written into a preallocated output buffer. O(L^2) for L steps,
O(L) memory. This is the baseline FutureFill is measured against.
"""

from __future__ import annotations

import torch

from futurefill.fftconv import causal_conv
from futurefill.online.base import OnlineConvEngine


class NaiveConv(OnlineConvEngine):
    """Online causal convolution by direct summation. See :class:`OnlineConvEngine`."""

    method = "naive"

    def __init__(self, h: torch.Tensor, *, max_len: int | None = None, batch_size: int = 1):
        super().__init__(h, max_len=max_len, batch_size=batch_size)
        # h_rev[:, L-1-k, 0] = h[:, k]: the last t+1 rows line up with inputs 0..t at step t.
        self._h_rev = self.h[:, : self.max_len].flip(-1).unsqueeze(-1).contiguous()
        self._reset()

    def _reset(self) -> None:
        d, b, n = self.channels, self.batch_size, self.max_len
        self._x = self._zeros(d, b, n)  # inputs, channel-major
        self._y = self._zeros(n, d, b)  # outputs; row t is returned (transposed) by step t

    def _buffers(self) -> list[torch.Tensor]:
        return [self._x, self._y, self._h_rev]

    def _prefill(self, u: torch.Tensor) -> torch.Tensor:
        prompt_len = u.shape[-1]
        self._x[:, :, :prompt_len].copy_(u.transpose(0, 1))
        return causal_conv(u, self.h)

    def _step(self, u_t: torch.Tensor) -> torch.Tensor:
        t = self._position
        self._x[:, :, t].copy_(u_t.t())
        y = self._y[t]
        torch.bmm(
            self._x[:, :, : t + 1], self._h_rev[:, self.max_len - 1 - t :], out=y.unsqueeze(-1)
        )
        self._position = t + 1
        return y.t()
