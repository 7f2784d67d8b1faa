"""A block's FFT convolution with fixed filters, cut into slices of bounded work.

A job of the deamortized FutureFill schedule writes ``m`` entries, from ``start`` on, of::

    y = irfft(X * G0 + P * G1, n)        X = rfft(x, n), the spectrum of a finished block x

with ``G0``, ``G1`` the spectra of two filter segments and ``P`` the spectrum of an earlier block,
kept by that block's own job (or no second term). At n = 2^18 one such call is a few milliseconds
that nothing can interrupt. The four-step FFT (Bailey 1990) writes a transform of length
n = n1 n2 as n2 transforms of length n1, a multiplication by twiddle factors and n1 transforms of
length n2: each pass is a batch of independent short transforms, which can be cut anywhere. For
a real block::

    xv[j1, j2] = x[n2 j1 + j2]                        the block zero-padded to n, as (n1, n2)
    pass 1, columns j2:  A[k1, j2] = W^(k1 j2) rfft_j1(xv)[k1, j2]                 k1 <= n1/2
    pass 2, rows k1:     X[k1, :] = fft_j2(A[k1, :])           (X[k1, k2] = fft(x, n)[k1 + n1 k2])
                         A[k1, :] = W^(-k1 j2) ifft_k2(X[k1, :] G0[k1, :] + P[k1, :] G1[k1, :])
    pass 3, columns j2:  y[n2 j1 + j2] = irfft_k1(A[:, j2])[j1]

with ``W = exp(-2 pi i / n)``. For every j2 the column ``A[:, j2]`` after pass 2 is Hermitian in
k1 (the product is the spectrum of a real signal), so rows k1 <= n1/2 are all there is to keep,
as in an rfft. Work and memory are those of the rfft pair it replaces, plus the twiddles
(n1/2 + 1) n2. A kept spectrum is in the layout of the plan that kept it.

Only a channel whose transform is larger than a slice, or longer than LONGEST_DIRECT, needs
this; smaller ones are cut by channels, each slice one rfft/irfft pair over a group of them (one
pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

__all__ = ["Pass", "SlicedConv", "run_passes"]

# Longer transforms are cut four-step whatever the slice size: past the core's cache one long row
# would make a slow slice, while the four-step's short transforms stay fast
# (docs/results/cpu-2core/tuning.md).
LONGEST_DIRECT = 8192


class Pass(NamedTuple):
    """``count`` independent slices; ``run(i)`` runs slice ``i`` (in any order, any thread).
    A slice's ops and their shapes are fixed: its result is the same bits whoever runs it (an
    FFT library's result may depend on how many transforms one call batches)."""

    count: int
    run: Callable[[int], None]


def run_passes(passes: list[Pass]) -> None:
    """Every slice of every pass, in order, in this thread."""
    for work in passes:
        for i in range(work.count):
            work.run(i)


class SlicedConv:
    """Entries of ``irfft(rfft(x, n) * G0 + P * G1, n)`` for blocks ``x`` ``(batch, channels,
    m)``, ``G0``, ``G1`` the spectra of filters ``g`` ``(terms, channels, <= n)`` at FFT size
    ``n`` (a power of two; linear convolution entries past n alias onto the first ones, as in
    any FFT convolution) and ``P`` a spectrum kept by an earlier job of this plan, in slices of
    about ``points`` complex values.

    When one channel's transform fits in a slice (``batch * n <= points``) and is at most
    :data:`LONGEST_DIRECT` long: one pass, each slice an rfft/irfft pair over
    ``points // (batch * n)`` channels. Otherwise the three passes of the
    four-step FFT (module docstring), one channel at a time, cut by columns (passes 1 and 3) or
    rows (pass 2). A pass may start only when the one before has finished. A slice builds its
    views when it runs, so a job of thousands of slices costs nothing to set up.

    For blocks of ``batch`` and g's channels: ``counts``, how many slices each pass has;
    ``layout``, the shape of a block's spectrum (kept, or the four-step's scratch), and
    ``spectrum_size``, its number of complex values.

    Parameters
    ----------
    g : Tensor, shape (terms, channels, filter_len <= n)
        ``g[0]`` multiplies the block's spectrum, ``g[1]`` (if any) the kept one.
    n : int
        The FFT size, a power of two.
    batch : int
        The batch size of the blocks.
    points : int or None
        About how many complex values a slice transforms; None: a job is one slice (one
        rfft/irfft pair over every channel, whatever n: for a device that runs it whole).
    """

    def __init__(self, g: torch.Tensor, n: int, batch: int, points: int | None):
        terms, channels = g.shape[:2]
        self.n = n
        self.four_step = points is not None and (batch * n > points or n > LONGEST_DIRECT)
        points = batch * n * channels if points is None else points
        if not self.four_step:
            self.spectrum = torch.fft.rfft(g, n=n)  # (T, D, n/2 + 1)
            self.channels_per_slice = max(1, min(channels, points // (batch * n)))
            self.counts = (-(-channels // self.channels_per_slice),)
            self.layout = (batch, channels, n // 2 + 1)
            self.spectrum_size = math.prod(self.layout)
            return
        # n2 <= n1 = n / n2, and n2 <= n / 4: blocks of n/4 or more split into whole rows.
        n2 = max(1, min(1 << (n.bit_length() - 1) // 2, n // 4))
        n1 = n // n2
        half = n1 // 2 + 1
        self.n1, self.n2 = n1, n2
        # G[t, c, k1, k2] = fft(g[t], n)[c, k1 + n1 k2], rows k1 <= n1/2.
        full = torch.fft.fft(g, n=n).view(terms, channels, n2, n1)
        self.spectrum = full[..., :half].transpose(-1, -2).contiguous()  # (T, D, n1/2 + 1, n2)
        k1 = torch.arange(half, dtype=torch.float64, device=g.device)[:, None]
        j2 = torch.arange(n2, dtype=torch.float64, device=g.device)[None, :]
        angle = (-2 * math.pi / n) * (k1 * j2)  # k1 j2 < n: exact in float64
        self.twiddle = torch.polar(torch.ones_like(angle), angle).to(self.spectrum.dtype)
        self.twiddle_inverse = self.twiddle.conj().resolve_conj()
        self.columns_per_slice = max(1, points // (batch * n1))
        self.rows_per_slice = max(1, points // (batch * n2))
        column_cuts = -(-n2 // self.columns_per_slice)
        row_cuts = -(-half // self.rows_per_slice)
        self.counts = (channels * column_cuts, channels * row_cuts, channels * column_cuts)
        self.layout = (batch, channels, half, n2)
        self.spectrum_size = math.prod(self.layout)

    def tensors(self) -> list[torch.Tensor]:
        """What the plan holds: the spectra (and the twiddles)."""
        if not self.four_step:
            return [self.spectrum]
        return [self.spectrum, self.twiddle, self.twiddle_inverse]

    def passes(
        self,
        x: torch.Tensor,
        start: int,
        out: torch.Tensor,
        *,
        keep: torch.Tensor | None = None,
        previous: torch.Tensor | None = None,
        scratch: torch.Tensor | None = None,
    ) -> list[Pass]:
        """The passes that write entries ``start .. start + m' - 1`` of the convolution into
        ``out`` ``(batch, channels, m')``: of ``x`` ``(batch, channels, m)`` by ``g[0]``, plus
        the block whose spectrum is ``previous`` by ``g[1]``. ``keep``: where to keep x's
        spectrum for a later job. ``keep``, ``previous`` and ``scratch`` (the four-step's work
        space; allocated if None) are flat complex tensors of at least ``spectrum_size``
        values. In the four-step case ``start``, ``m'`` and ``m`` must be multiples of ``n2``
        (n2 <= n/4: multiples of n/4 always are). The passes hold the tensors they use."""
        batch, channels, m = x.shape
        if (batch, channels) != self.layout[:2]:
            raise ValueError(
                f"blocks of shape {tuple(x.shape)} for a plan of (batch, channels) "
                f"{self.layout[:2]}"
            )
        size, shape = self.spectrum_size, self.layout
        keep, previous = (None if t is None else t[:size].view(shape) for t in (keep, previous))
        if not self.four_step:
            return [self._channel_groups(x, start, out, keep, previous)]
        n1, n2 = self.n1, self.n2
        if scratch is None:
            scratch = torch.empty(size, dtype=self.spectrum.dtype, device=x.device)
        scratch = scratch[:size].view(shape)
        blocks = x.view(batch, channels, m // n2, n2)
        row, out = start // n2, out.unflatten(-1, (-1, n2))
        spectrum, twiddle, twiddle_inverse = self.spectrum, self.twiddle, self.twiddle_inverse
        width, height = self.columns_per_slice, self.rows_per_slice
        column_cuts, row_cuts = self.counts[0] // channels, self.counts[1] // channels

        def forward(i: int) -> None:  # pass 1: transforms down the columns, then the twiddles
            c, k = divmod(i, column_cuts)
            js = slice(k * width, (k + 1) * width)
            column = torch.fft.rfft(blocks[:, c, :, js], n=n1, dim=-2)
            torch.mul(column, twiddle[:, js], out=scratch[:, c, :, js])

        def middle(i: int) -> None:  # pass 2: along the rows, forward, times the filters, back
            c, k = divmod(i, row_cuts)
            ks = slice(k * height, (k + 1) * height)
            rows = scratch[:, c, ks]
            product = torch.fft.fft(rows, dim=-1)
            if keep is not None:
                keep[:, c, ks].copy_(product)
            product.mul_(spectrum[0, c, ks])
            if previous is not None:
                product.addcmul_(previous[:, c, ks], spectrum[1, c, ks])
            torch.mul(torch.fft.ifft(product, dim=-1), twiddle_inverse[ks], out=rows)

        def inverse(i: int) -> None:  # pass 3: back down the columns; wanted rows to the output
            c, k = divmod(i, column_cuts)
            js = slice(k * width, (k + 1) * width)
            y = torch.fft.irfft(scratch[:, c, :, js], n=n1, dim=-2)
            out[:, c, :, js].copy_(y[:, row : row + out.shape[-2]])

        return [
            Pass(count, run)
            for count, run in zip(self.counts, (forward, middle, inverse), strict=True)
        ]

    def _channel_groups(
        self,
        x: torch.Tensor,
        start: int,
        out: torch.Tensor,
        keep: torch.Tensor | None,
        previous: torch.Tensor | None,
    ) -> Pass:
        """Slices of a slice's worth of channels each."""
        n, spectrum, group = self.n, self.spectrum, self.channels_per_slice
        stop = start + out.shape[-1]

        def run(i: int) -> None:
            cs = slice(i * group, (i + 1) * group)
            product = torch.fft.rfft(x[:, cs], n=n)
            if keep is not None:
                keep[:, cs].copy_(product)
            product.mul_(spectrum[0, cs])
            if previous is not None:
                product.addcmul_(previous[:, cs], spectrum[1, cs])
            out[:, cs].copy_(torch.fft.irfft(product, n=n)[..., start:stop])

        return Pass(self.counts[0], run)
