"""Spectral Transform Unit (STU): convolutions with fixed spectral filters, learned mixing.

With the k spectral filters ``phi_j`` (:func:`futurefill.layers.spectral.spectral_filters`) and
their sign-alternating versions ``phi~_j[n] = (-1)^n phi_j[n]``, the features of the input
``u`` (batch, length, d_model) are, per channel::

    U+_{t,j} = sum_{s<=t} phi_j[t-s]  u_s          (plus branch)
    U-_{t,j} = sum_{s<=t} phi~_j[t-s] u_s          (minus branch)

Full form (``tensordot=False``)::

    y_t = sum_j U+_{t,j} @ M+_j + sum_j U-_{t,j} @ M-_j        M+_j, M-_j: (d_model, d_model)

Tensordot approximation (``tensordot=True``, as in Flash STU): project first, ``x = u @ M_in``,
and give every channel one learned combination of the filters,
``h = phi^T @ M_f+ + phi~^T @ M_f-`` (length, d_model), so the layer is one depthwise
convolution ``y = h * x``.

The minus branch follows the STU paper, ``U-_{t,j} = sum_i (-1)^i phi_j[i] u_{t-i}`` (the sign on
the filter lag), so it is a time-invariant convolution and needs no parity at decode time. (Writing
it as ``phi_j * ((-1)^t u)`` instead differs by an overall factor ``(-1)^t``.)

Decoding: the full form runs one engine whose channels are the 2k filters of the bank and whose
batch is ``batch * d_model`` (every input channel is a row that all 2k filters see), so the
filter spectra are held once, not once per channel; the tensordot form runs one depthwise engine
over ``d_model`` channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from futurefill.fftconv import causal_conv, compute_dtype, fft_size
from futurefill.layers.base import Mixer, MixerCache
from futurefill.layers.spectral import spectral_filters

__all__ = ["STU"]


def filter_bank_conv(x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Causal convolution of every channel with every filter of a shared bank, by FFT.

    Parameters
    ----------
    x : Tensor, shape (batch, channels, length)
    bank : Tensor, shape (filters, filter_len), ``filter_len >= length``.

    Returns
    -------
    Tensor, shape (batch, channels, filters, length). One FFT per channel and per filter, not per
    (channel, filter) pair.
    """
    length = x.shape[-1]
    n = fft_size(2 * length)
    dtype = compute_dtype(x.dtype)
    spec_x = torch.fft.rfft(x.to(dtype), n=n).unsqueeze(2)  # (batch, channels, 1, n//2+1)
    spec_h = torch.fft.rfft(bank[:, :length].to(dtype), n=n)  # (filters, n//2+1)
    return torch.fft.irfft(spec_x * spec_h, n=n)[..., :length].to(x.dtype)


class STU(Mixer):
    """Spectral state space layer (see the module docstring for the equations).

    Parameters
    ----------
    d_model : int
    max_len : int
        Filter length (longest sequence).
    num_eigh : int
        Number k of spectral filters.
    tensordot : bool
        The tensordot approximation (one depthwise convolution) instead of the full form.

    Buffers
    -------
    filters : (2k, max_len)
        ``phi`` (rows ``0..k-1``) then ``phi~`` (rows ``k..2k-1``), computed once in float64 and
        rounded to the layer's dtype; saved in the state dict, so a saved model reloads them
        bit for bit.
    """

    def __init__(self, d_model: int, max_len: int, num_eigh: int = 24, *, tensordot: bool = True):
        super().__init__(d_model, max_len)
        if not 1 <= num_eigh <= max_len:
            raise ValueError(f"num_eigh must be in [1, max_len={max_len}], got {num_eigh}")
        self.num_eigh = num_eigh
        self.tensordot = tensordot
        self.register_buffer("filters", self._exact_filters().to(torch.get_default_dtype()))
        d, k = d_model, num_eigh
        if tensordot:
            self.m_in = nn.Parameter(torch.randn(d, d) / math.sqrt(d))
            # (2k, d): rows 0..k-1 are M_f+, rows k..2k-1 are M_f-
            self.m_filters = nn.Parameter(torch.randn(2 * k, d) / math.sqrt(2 * k))
        else:
            # (d_in, 2k, d_out): m[:, j] is M+_j for j < k and M-_{j-k} after; flattening the
            # first two dimensions matches the (channel, filter) order of the features.
            self.m = nn.Parameter(torch.randn(d, 2 * k, d) / math.sqrt(2 * k * d))

    def _exact_filters(self) -> torch.Tensor:
        """``[phi; phi~]``, shape (2k, max_len), in float64."""
        phi = spectral_filters(self.max_len, self.num_eigh)  # (k, L)
        signs = (-1.0) ** torch.arange(self.max_len, dtype=torch.float64)
        return torch.cat([phi, phi * signs])

    def _apply(self, fn, recurse=True):
        """Move or cast as usual, but cast up to float64 from the float64 source, not by widening
        a rounded copy (``STU(...).double()`` gets filters exact to float64)."""
        before = self.filters.dtype
        super()._apply(fn, recurse)
        if self.filters.dtype == torch.float64 and before != torch.float64:
            self.filters.copy_(self._exact_filters())
        return self

    def long_filters(self) -> list[torch.Tensor]:
        if self.tensordot:
            return [self._depthwise_filters()]
        return [self.filters]  # (2k, max_len), shared by every channel: see engine_batch_size

    def engine_batch_size(self, batch_size: int) -> int:
        return batch_size if self.tensordot else batch_size * self.d_model

    def _depthwise_filters(self) -> torch.Tensor:
        """The tensordot form's per-channel filters, ``(d_model, max_len)``."""
        return (self.filters.T @ self.m_filters).T

    def _mix(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., d_model * 2k) -> (..., d_model)`` by the learned M+ and M-."""
        return features @ self.m.reshape(-1, self.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, d_model) -> (batch, length, d_model)``, by FFT."""
        self._check_length(x)
        if self.tensordot:
            xc = (x @ self.m_in).transpose(1, 2)  # (batch, d_model, length)
            return causal_conv(xc, self._depthwise_filters()).transpose(1, 2)
        features = filter_bank_conv(x.transpose(1, 2), self.filters)  # (B, d_model, 2k, length)
        features = features.permute(0, 3, 1, 2).flatten(2)  # (B, length, d_model * 2k)
        return self._mix(features)

    @torch.no_grad()
    def prefill(self, x: torch.Tensor, cache: MixerCache) -> torch.Tensor:
        self._check_length(x)
        (engine,) = cache.engines
        if self.tensordot:
            return engine.prefill((x @ self.m_in).transpose(1, 2)).transpose(1, 2)
        batch, length, d = x.shape
        rows = x.transpose(1, 2).reshape(batch * d, 1, length)  # (B * d_model, 1, length)
        features = engine.prefill(rows.expand(-1, 2 * self.num_eigh, -1))  # (B * d, 2k, length)
        # Feature c * 2k + j is filter j on channel c, as in forward.
        features = features.reshape(batch, d, 2 * self.num_eigh, length).permute(0, 3, 1, 2)
        return self._mix(features.flatten(2))

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, cache: MixerCache) -> torch.Tensor:
        (engine,) = cache.engines
        if self.tensordot:
            return engine.step(x_t @ self.m_in)
        rows = x_t.reshape(-1, 1).expand(-1, 2 * self.num_eigh)  # (B * d_model, 2k)
        return self._mix(engine.step(rows).reshape(x_t.shape[0], -1))
