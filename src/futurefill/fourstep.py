"""A block's linear convolution with a fixed filter, cut into slices of bounded work.

A FutureFill job is ``y = irfft(rfft(x, n) * rfft(g, n), n)`` for a finished block ``x`` and a
filter segment ``g``. At n = 2^18 one such call is a few milliseconds that nothing can interrupt.
The four-step FFT (Bailey 1990) writes a transform of length n = n1 n2 as n2 transforms of
length n1, a multiplication by twiddle factors and n1 transforms of length n2: each pass is a
batch of independent short transforms, which can be cut anywhere. For a real block::

    xv[j1, j2] = x[n2 j1 + j2]                        the block zero-padded to n, as (n1, n2)
    pass 1, columns j2:  A[k1, j2] = W^(k1 j2) rfft_j1(xv)[k1, j2]                 k1 <= n1/2
    pass 2, rows k1:     A[k1, :]  = W^(-k1 j2) ifft_k2( fft_j2(A[k1, :]) * G[k1, :] )
    pass 3, columns j2:  y[n2 j1 + j2] = irfft_k1(A[:, j2])[j1]

with ``W = exp(-2 pi i / n)`` and ``G[k1, k2] = fft(g, n)[k1 + n1 k2]``. Pass 1 and the forward
transform of pass 2 give ``fft(x, n)[k1 + n1 k2]``; the inverse transform of pass 2 and pass 3
undo it. For every j2 the column ``A[:, j2]`` after pass 2 is Hermitian in k1 (the product is the
spectrum of a real signal), so rows k1 <= n1/2 are all there is to keep, as in an rfft. Work and
memory are those of the rfft pair it replaces, plus the twiddles (n1/2 + 1) n2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["SlicedConv"]

Slice = Callable[[], None]


class SlicedConv:
    """Entries of the linear convolution of blocks ``x`` ``(batch, channels, m)`` with the
    filters ``g`` ``(channels, <= n)`` at FFT size ``n`` (a power of two; entries past n alias
    onto the first ones, as in any FFT convolution), as passes of slices of about ``points``
    complex values each.

    A job that fits in one slice (``batch * channels * n <= points``) is one rfft/irfft pair;
    a larger one is the three passes of the four-step FFT (module docstring), each cut by
    channels and then by columns (passes 1 and 3) or rows (pass 2). The slices of a pass are
    independent of each other; a pass may start only when the one before has finished.

    Parameters
    ----------
    g : Tensor, shape (channels, filter_len <= n)
    n : int
        The FFT size, a power of two.
    batch : int
        The batch size of the blocks.
    points : int
        About how many complex values a slice transforms.
    """

    def __init__(self, g: torch.Tensor, n: int, batch: int, points: int):
        channels = g.shape[0]
        self.n = n
        self.whole = batch * channels * n <= points
        if self.whole:
            self.spectrum = torch.fft.rfft(g, n=n)  # (D, n/2 + 1)
            return
        # n2 <= n1 = n / n2, and n2 <= n / 4: blocks of n/4 or more split into whole rows.
        n2 = max(1, min(1 << (n.bit_length() - 1) // 2, n // 4))
        n1 = n // n2
        half = n1 // 2 + 1
        self.n1, self.n2 = n1, n2
        # G[c, k1, k2] = fft(g, n)[c, k1 + n1 k2], rows k1 <= n1/2.
        full = torch.fft.fft(g, n=n).view(channels, n2, n1)
        self.spectrum = full[..., :half].transpose(1, 2).contiguous()  # (D, n1/2 + 1, n2)
        k1 = torch.arange(half, dtype=torch.float64, device=g.device)[:, None]
        j2 = torch.arange(n2, dtype=torch.float64, device=g.device)[None, :]
        angle = (-2 * math.pi / n) * (k1 * j2)  # k1 j2 < n: exact in float64
        self.twiddle = torch.polar(torch.ones_like(angle), angle).to(self.spectrum.dtype)
        self.twiddle_inverse = self.twiddle.conj().resolve_conj()
        # Whole channels per slice, or, when one channel is too large, columns or rows of one.
        if batch * n <= points:
            self.channels_per_slice = points // (batch * n)
            self.columns_per_slice, self.rows_per_slice = n2, half
        else:
            self.channels_per_slice = 1
            self.columns_per_slice = max(1, points // (batch * n1))
            self.rows_per_slice = max(1, points // (batch * n2))

    def tensors(self) -> list[torch.Tensor]:
        """What the plan holds: the spectrum (and the twiddles)."""
        if self.whole:
            return [self.spectrum]
        return [self.spectrum, self.twiddle, self.twiddle_inverse]

    def passes(self, x: torch.Tensor, targets: list[tuple[int, torch.Tensor]]) -> list[list[Slice]]:
        """The slices that add entries ``start .. start + len - 1`` of the convolution of ``x``
        ``(batch, channels, m)`` into each ``out`` ``(batch, channels, len)`` of ``targets``
        ``[(start, out), ...]``: one list per pass. Starts, lengths and ``m`` must be multiples
        of ``n2`` (the four-step case; n2 <= n/4, so multiples of n/4 always are). The slices
        hold the tensors they read and write."""
        if self.whole:
            return [[self._whole_slice(x, targets)]]
        batch, channels, m = x.shape
        n1, n2 = self.n1, self.n2
        scratch = torch.empty(
            batch, channels, n1 // 2 + 1, n2, dtype=self.spectrum.dtype, device=x.device
        )
        blocks = x.view(batch, channels, m // n2, n2)
        outs = [(start // n2, out.view(batch, channels, -1, n2)) for start, out in targets]
        groups = [
            slice(c, c + self.channels_per_slice)
            for c in range(0, channels, self.channels_per_slice)
        ]
        columns = self._cuts(n2, self.columns_per_slice)
        rows = self._cuts(n1 // 2 + 1, self.rows_per_slice)
        forward = [
            self._columns_forward(blocks[:, cs, :, js], scratch[:, cs, :, js], self.twiddle[:, js])
            for cs in groups
            for js in columns
        ]
        middle = [
            self._rows(scratch[:, cs, ks], self.spectrum[cs, ks], self.twiddle_inverse[ks])
            for cs in groups
            for ks in rows
        ]
        inverse = [
            self._columns_inverse(
                scratch[:, cs, :, js], [(row, out[:, cs, :, js]) for row, out in outs]
            )
            for cs in groups
            for js in columns
        ]
        return [forward, middle, inverse]

    @staticmethod
    def _cuts(length: int, size: int) -> list[slice]:
        return [slice(i, i + size) for i in range(0, length, size)]

    def _whole_slice(self, x: torch.Tensor, targets: list[tuple[int, torch.Tensor]]) -> Slice:
        n, spectrum = self.n, self.spectrum

        def run() -> None:
            y = torch.fft.irfft(torch.fft.rfft(x, n=n) * spectrum, n=n)
            for start, out in targets:
                out += y[..., start : start + out.shape[-1]]

        return run

    def _columns_forward(self, block: torch.Tensor, scratch: torch.Tensor, twiddle) -> Slice:
        n1 = self.n1

        def run() -> None:  # pass 1: transforms down the columns, then the twiddles
            torch.mul(torch.fft.rfft(block, n=n1, dim=-2), twiddle, out=scratch)

        return run

    @staticmethod
    def _rows(scratch: torch.Tensor, spectrum: torch.Tensor, twiddle: torch.Tensor) -> Slice:
        def run() -> None:  # pass 2: along the rows, forward, times the filter, and back
            product = torch.fft.fft(scratch, dim=-1).mul_(spectrum)
            torch.mul(torch.fft.ifft(product, dim=-1), twiddle, out=scratch)

        return run

    def _columns_inverse(self, scratch: torch.Tensor, outs: list) -> Slice:
        n1 = self.n1

        def run() -> None:  # pass 3: back down the columns; the wanted rows into the outputs
            y = torch.fft.irfft(scratch, n=n1, dim=-2)
            for row, out in outs:
                out += y[..., row : row + out.shape[-2], :]

        return run
