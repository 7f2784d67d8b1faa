"""Naive cached convolution: the strongest direct method, O(t) work at step t.

Keeps every input in a preallocated channel-major history ``(batch, channels, max_len)`` beside
the reversed filter ``(channels, max_len)``; step t multiplies the ``t + 1`` inputs seen so far by
the filter into a preallocated scratch buffer and sums them into a preallocated output row.
O(L^2) for L steps, O(L) memory: the baseline FutureFill is measured against.

This form was the fastest of the ways measured (``vecdot``, ``bmm``, ``einsum``, ``conv1d``:
docs/results/cpu-2core/tuning.md).
"""

from __future__ import annotations

import torch

from futurefill.fftconv import causal_conv
from futurefill.online.base import OnlineConvEngine


class NaiveConv(OnlineConvEngine):
    """Online causal convolution by direct summation. See :class:`OnlineConvEngine`."""

    method = "naive"
    summary = "O(L^2) time, O(P + K) memory: a direct dot product per step"
    shared_attributes = ("h", "_h_rev")

    def __init__(self, h: torch.Tensor, *, max_len: int | None = None, batch_size: int = 1):
        super().__init__(h, max_len=max_len, batch_size=batch_size)
        # h_rev[:, L-1-k] = h[:, k]: its last t+1 columns line up with inputs 0..t at step t.
        self._h_rev = self.h[:, : self.max_len].flip(-1).contiguous()
        self._reset()

    def _reset(self) -> None:
        b, d, n = self.batch_size, self.channels, self.max_len
        self._x = self._zeros(b, d, n)  # inputs
        self._products = self._zeros(b, d, n)  # scratch: h[t-s] * u[s] for s <= t
        self._y = self._zeros(n, b, d)  # outputs; row t is returned by step t

    def _buffers(self) -> list[torch.Tensor]:
        return [self._x, self._products, self._y, self._h_rev]

    def _prefill(self, u: torch.Tensor) -> torch.Tensor:
        self._x[..., : u.shape[-1]].copy_(u)
        return causal_conv(u, self.h)

    def _step(self, u_t: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        t = self._position
        self._x[..., t].copy_(u_t)
        products = self._products[..., : t + 1]
        torch.mul(self._x[..., : t + 1], self._h_rev[:, self.max_len - 1 - t :], out=products)
        y = self._y[t] if out is None else out
        return torch.sum(products, dim=-1, out=y)

    def _extend(self, u: torch.Tensor) -> torch.Tensor:
        """The chunk after the history: one FFT convolution of the whole prefix."""
        start, stop = self._position, self._position + u.shape[-1]
        self._x[..., start:stop].copy_(u)
        return causal_conv(self._x[..., :stop], self.h[:, :stop])[..., start:]

    def step_traced(self, u_t: torch.Tensor) -> torch.Tensor:
        """The step as a fixed-shape function of the index tensor t: ``u_t`` goes to column t
        of the history, and ``y = sum_s h[t - s] x[s]`` over the whole history, the filter
        gathered by lag (zero for s > t, whose inputs are not yet written)."""
        t, n = self._index, self._x.shape[-1]  # n = max_len, a dynamic size when compiled
        self._x.index_copy_(2, t, u_t.unsqueeze(-1))
        lag = t - torch.arange(n, device=self.device)  # (max_len,)
        h = self._h_rev.index_select(1, (n - 1 - lag).clamp(max=n - 1))
        return (self._x * (h * (lag >= 0))).sum(dim=-1)

    def prepare_traced(self) -> None:
        """Also marks the history's length dynamic for ``torch.compile``: one graph serves
        every ``max_len``."""
        super().prepare_traced()
        torch._dynamo.maybe_mark_dynamic(self._x, 2)
        torch._dynamo.maybe_mark_dynamic(self._h_rev, 1)

    def _traced_index(self) -> int:
        return self._position

    def _scheduled_work(self) -> None:
        return None
