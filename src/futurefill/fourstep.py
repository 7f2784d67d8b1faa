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

Only a channel whose transform is larger than a slice, or longer than LONGEST_DIRECT, needs
this; smaller ones are cut by channels, each slice one rfft/irfft pair over a group of them (one
pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["Pass", "SlicedConv"]

# Longer transforms are cut four-step whatever the slice size: on a 2-core x86 VM (float32, one
# thread) an rfft/irfft pair cost 11 ns a point at n = 8192 and 28 ns at 16384 (a row outgrows
# the core's cache), so one long row would make a slow slice; the four-step's short transforms
# stay fast. Measured on the deamortized engine (bench layer, 128 channels, L = 2^18): largest
# step 4.7 ms with this cap, 15.3 ms without (slices of one long row paced in the decoding
# thread); total 2.08x continuous's with it, 1.82x without.
LONGEST_DIRECT = 8192


class Pass(NamedTuple):
    """``count`` independent slices; ``run(i)`` runs slice ``i`` (in any order, any thread)."""

    count: int
    run: Callable[[int], None]


class SlicedConv:
    """Entries of the linear convolution of blocks ``x`` ``(batch, channels, m)`` with the
    filters ``g`` ``(channels, <= n)`` at FFT size ``n`` (a power of two; entries past n alias
    onto the first ones, as in any FFT convolution), in slices of about ``points`` complex values.

    When one channel's transform fits in a slice (``batch * n <= points``) and is at most
    :data:`LONGEST_DIRECT` long: one pass, each slice an rfft/irfft pair over
    ``points // (batch * n)`` channels. Otherwise the three passes of the
    four-step FFT (module docstring), one channel at a time, cut by columns (passes 1 and 3) or
    rows (pass 2). A pass may start only when the one before has finished. A slice builds its
    views when it runs, so a job of thousands of slices costs nothing to set up.

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
        self.four_step = batch * n > points or n > LONGEST_DIRECT
        if not self.four_step:
            self.spectrum = torch.fft.rfft(g, n=n)  # (D, n/2 + 1)
            self.channels_per_slice = min(channels, points // (batch * n))
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
        self.columns_per_slice = max(1, points // (batch * n1))
        self.rows_per_slice = max(1, points // (batch * n2))

    def tensors(self) -> list[torch.Tensor]:
        """What the plan holds: the spectrum (and the twiddles)."""
        if not self.four_step:
            return [self.spectrum]
        return [self.spectrum, self.twiddle, self.twiddle_inverse]

    def scratch_size(self, batch: int, channels: int) -> int:
        """Complex values of the scratch :meth:`passes` needs (0 without the four-step)."""
        return batch * channels * (self.n1 // 2 + 1) * self.n2 if self.four_step else 0

    def passes(
        self,
        x: torch.Tensor,
        targets: list[tuple[int, torch.Tensor]],
        scratch: torch.Tensor | None = None,
    ) -> list[Pass]:
        """The passes that add entries ``start .. start + len - 1`` of the convolution of ``x``
        ``(batch, channels, m)`` into each ``out`` ``(batch, channels, len)`` of ``targets``
        ``[(start, out), ...]``. Starts, lengths and ``m`` must be multiples of ``n2`` in the
        four-step case (n2 <= n/4: multiples of n/4 always are), which works in ``scratch``, a
        flat complex tensor of at least :meth:`scratch_size` values (allocated if None). The
        passes hold the tensors they read and write."""
        if not self.four_step:
            return [self._channel_groups(x, targets)]
        batch, channels, m = x.shape
        n1, n2 = self.n1, self.n2
        half = n1 // 2 + 1
        size = self.scratch_size(batch, channels)
        if scratch is None:
            scratch = torch.empty(size, dtype=self.spectrum.dtype, device=x.device)
        scratch = scratch[:size].view(batch, channels, half, n2)
        blocks = x.view(batch, channels, m // n2, n2)
        outs = [(start // n2, out.view(batch, channels, -1, n2)) for start, out in targets]
        spectrum, twiddle, twiddle_inverse = self.spectrum, self.twiddle, self.twiddle_inverse
        width, height = self.columns_per_slice, self.rows_per_slice
        column_cuts, row_cuts = -(-n2 // width), -(-half // height)

        def forward(i: int) -> None:  # pass 1: transforms down the columns, then the twiddles
            c, k = divmod(i, column_cuts)
            js = slice(k * width, (k + 1) * width)
            column = torch.fft.rfft(blocks[:, c, :, js], n=n1, dim=-2)
            torch.mul(column, twiddle[:, js], out=scratch[:, c, :, js])

        def middle(i: int) -> None:  # pass 2: along the rows, forward, times the filter, back
            c, k = divmod(i, row_cuts)
            ks = slice(k * height, (k + 1) * height)
            rows = scratch[:, c, ks]
            product = torch.fft.fft(rows, dim=-1).mul_(spectrum[c, ks])
            torch.mul(torch.fft.ifft(product, dim=-1), twiddle_inverse[ks], out=rows)

        def inverse(i: int) -> None:  # pass 3: back down the columns; wanted rows to the outputs
            c, k = divmod(i, column_cuts)
            js = slice(k * width, (k + 1) * width)
            y = torch.fft.irfft(scratch[:, c, :, js], n=n1, dim=-2)
            for row, out in outs:
                out[:, c, :, js].add_(y[:, row : row + out.shape[-2]])  # no setitem copy

        return [
            Pass(channels * column_cuts, forward),
            Pass(channels * row_cuts, middle),
            Pass(channels * column_cuts, inverse),
        ]

    def convolve(self, x: torch.Tensor, targets: list[tuple[int, torch.Tensor]]) -> None:
        """All at once, without the four-step: what :meth:`passes` adds, in one call."""
        if self.four_step:
            raise ValueError("a four-step plan runs in passes")
        self._channel_groups(x, targets, x.shape[1]).run(0)

    def _channel_groups(
        self, x: torch.Tensor, targets: list[tuple[int, torch.Tensor]], group: int | None = None
    ) -> Pass:
        """Slices of ``group`` channels (default: a slice's worth) each."""
        n, spectrum = self.n, self.spectrum
        group = self.channels_per_slice if group is None else group

        def run(i: int) -> None:
            cs = slice(i * group, (i + 1) * group)
            y = torch.fft.irfft(torch.fft.rfft(x[:, cs], n=n) * spectrum[cs], n=n)
            for start, out in targets:
                out[:, cs].add_(y[..., start : start + out.shape[-1]])

        return Pass(-(-x.shape[1] // group), run)
