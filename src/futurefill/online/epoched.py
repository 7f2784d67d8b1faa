"""Epoched-FutureFill (FutureFill paper, section 3): O(L^1.5 sqrt(log L)) time, O(epoch_len) cache.

Inputs are split into epochs of ``E = epoch_len`` steps (counted from the end of the prompt). A
cache ``C`` of length E holds, for each output of the current epoch, the contribution of every
input before the epoch. Within an epoch each new input is pushed directly into the outputs of
the rest of the epoch (an axpy of at most E terms), so::

    y[t] = C[t - e] after the push of u[t]          (e = first step of the epoch)

When an epoch ends, C is refilled with the contribution of the whole prefix to the next E outputs:
one FutureFill over all inputs so far (an FFT of size ``fft_size(t + 1 + E)``). Cost per epoch
O(t log t) + O(E) per step, so O(L^2 log L / E + L E) in all; ``E ~ sqrt(L log2 L)`` balances them.
The inputs are kept (O(L)) since each refill reads the whole prefix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch

from futurefill.checks import check_int
from futurefill.fftconv import fft_size, prompt_conv
from futurefill.online.base import OnlineConvEngine, ScheduledWork, traced_push


def default_epoch_len(max_len: int) -> int:
    """``round(sqrt(L log2 L))``, the paper's balance point for L = ``max_len`` (at least 1)."""
    return max(1, round(math.sqrt(max_len * math.log2(max(max_len, 2)))))


class EpochedConv(OnlineConvEngine):
    """Online causal convolution by Epoched-FutureFill. See :class:`OnlineConvEngine`.

    Parameters
    ----------
    epoch_len : int, optional
        Steps per epoch (the cache length); default :func:`default_epoch_len` of ``max_len``.
    """

    method = "epoched"
    options: ClassVar[dict[str, Callable[[object], int]]] = {
        "epoch_len": lambda value: check_int(value, "epoch_len")
    }
    summary = (
        "O(L^1.5 sqrt(log L)) time, O(P + K) inputs + O(E) cache: epochs of E steps, each "
        "refilled by one FFT (epoch_len E, default sqrt(L log2 L))"
    )
    shared_attributes = ("h", "_h_padded", "_h_head", "_h_rests", "_spectra")

    def __init__(
        self,
        h: torch.Tensor,
        *,
        max_len: int | None = None,
        batch_size: int = 1,
        epoch_len: int | None = None,
    ):
        super().__init__(h, max_len=max_len, batch_size=batch_size)
        if epoch_len is None:
            epoch_len = default_epoch_len(self.max_len)
        epoch_len = check_int(epoch_len, "epoch_len")
        self.epoch_len = epoch_len
        # Filter zero-padded so that every refill may read h[0 .. t + E].
        padded_len = fft_size(self.max_len + epoch_len)
        h_padded = self._zeros(self.channels, padded_len)
        width = min(padded_len, self.h.shape[-1])
        h_padded[:, :width].copy_(self.h[:, :width])
        self._h_padded = h_padded
        # (E, 1, D): what an input adds to the outputs after it, time-major like the cache.
        self._h_head = h_padded[:, :epoch_len].t().unsqueeze(1).contiguous()
        self._spectra: dict[int, torch.Tensor] = {}
        self._reset()

    def _reset(self) -> None:
        e, batch, channels = self.epoch_len, self.batch_size, self.channels
        # Inputs channel-major (the refill FFT runs along the last dimension, 2-3x faster than
        # along the first); the current epoch's inputs and the cache time-major, with the views
        # each step uses built once here.
        self._x = self._zeros(batch, channels, self.max_len)
        self._x_epoch = self._zeros(e, batch, channels)
        self._cache = self._zeros(e, batch, channels)
        self._x_rows = list(self._x_epoch.unbind(0))
        self._cache_rows = list(self._cache.unbind(0))
        self._cache_rests = [self._cache[j:] for j in range(e)]  # outputs j .. E-1 of the epoch
        self._h_rests = [self._h_head[: e - j] for j in range(e)]
        self._epoch_start = 0

    def _buffers(self) -> list[torch.Tensor]:
        buffers = [self._x, self._x_epoch, self._cache, self._h_padded, self._h_head]
        return buffers + list(self._spectra.values())

    def _spectrum(self, n: int) -> torch.Tensor:
        """rfft of the filter at FFT length n, shape (channels, n // 2 + 1); computed once."""
        spectrum = self._spectra.get(n)
        if spectrum is None:
            spectrum = torch.fft.rfft(self._h_padded[:, :n], n=n)
            self._spectra[n] = spectrum
        return spectrum

    def _prefill(self, u: torch.Tensor) -> torch.Tensor:
        prompt_len = u.shape[-1]
        h = self._h_padded[:, : prompt_len + self.epoch_len]
        y, future = prompt_conv(u, h, self.epoch_len)
        self._x[..., :prompt_len].copy_(u)
        self._cache.copy_(future.permute(2, 0, 1))
        self._epoch_start = prompt_len
        return y

    def _refill(self, start: int, seen: int) -> None:
        """File the epoch's inputs (``start .. seen-1``); cache <- contribution of inputs
        0 .. seen-1 to outputs seen .. seen+E-1 (one FutureFill over the whole prefix)."""
        self._x[..., start:seen].copy_(self._x_epoch[: seen - start].permute(1, 2, 0))
        n = fft_size(seen + self.epoch_len)
        spec = torch.fft.rfft(self._x[..., :seen], n=n).mul_(self._spectrum(n))
        future = torch.fft.irfft(spec, n=n)[..., seen : seen + self.epoch_len]
        self._cache.copy_(future.permute(2, 0, 1))

    def prepare_traced(self) -> None:
        """Also marks the epoch dimension dynamic for ``torch.compile``: the epoch length follows
        ``max_len``, and one graph serves every length (static graphs would recompile at every
        new length, and dynamo runs eagerly after 8)."""
        super().prepare_traced()
        for buffer in (self._x_epoch, self._cache, self._h_head):
            torch._dynamo.maybe_mark_dynamic(buffer, 0)

    def step_traced(self, u_t: torch.Tensor) -> torch.Tensor:
        """The epoch step as a fixed-shape function of the index tensor: the input goes to row j
        of the epoch, and ``h[t - j] u`` to every output t >= j of the cache (the filter
        gathered by lag, zero for t < j: :func:`~futurefill.online.base.traced_push`)."""
        return traced_push(self._x_epoch, self._cache, self._h_head, u_t, self._index)

    def _extend(self, u: torch.Tensor) -> torch.Tensor | None:
        """At an epoch's start (after a prefill or an extension), the prefix and the chunk as
        one prompt: their outputs and the cache of the next epoch, from one FFT pass."""
        if self._position != self._epoch_start:
            return None
        start, stop = self._position, self._position + u.shape[-1]
        self._x[..., start:stop].copy_(u)
        h = self._h_padded[:, : stop + self.epoch_len]
        y, future = prompt_conv(self._x[..., :stop], h, self.epoch_len)
        self._cache.copy_(future.permute(2, 0, 1))
        self._epoch_start = stop
        return y[..., start:]

    def _traced_index(self) -> int:
        return self._position - self._epoch_start

    def _scheduled_work(self) -> EpochRefill | None:
        """At an epoch's end the next epoch starts here (bookkeeping now); its refill is the
        work (the tensors' part)."""
        seen = self._position
        if seen - self._epoch_start < self.epoch_len or seen >= self.max_len:
            return None
        start, self._epoch_start = self._epoch_start, seen
        return EpochRefill(self, start, seen)

    def _step(self, u_t: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        j = self._position - self._epoch_start
        self._x_rows[j].copy_(u_t)
        self._cache_rests[j].addcmul_(self._h_rests[j], u_t)
        return self._cache_rows[j].clone() if out is None else out.copy_(self._cache_rows[j])


class EpochRefill(ScheduledWork):
    """An epoched engine's refill at the end of the epoch ``start .. seen-1``."""

    def __init__(self, engine: EpochedConv, start: int, seen: int):
        self.engine, self.start, self.seen = engine, start, seen

    def run(self) -> None:
        self.engine._refill(self.start, self.seen)
