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

Decoding: both forms are built from :mod:`futurefill.nn`, so the forward below is also the decode
path. The full form's :class:`~futurefill.nn.FilterBankConv` holds the 2k filters once (its engine's
batch is ``batch * d_model``); the tensordot form's :class:`~futurefill.nn.LongConv` takes its
depthwise filters from :meth:`STU.depthwise_filters`, materialised once per decoding session.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from futurefill import nn as ffnn
from futurefill.layers.spectral import spectral_filters

__all__ = ["STU"]


class STU(nn.Module):
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
        super().__init__()
        if not 1 <= num_eigh <= max_len:
            raise ValueError(f"num_eigh must be in [1, max_len={max_len}], got {num_eigh}")
        self.d_model = d_model
        self.max_len = max_len
        self.num_eigh = num_eigh
        self.tensordot = tensordot
        self.register_buffer("filters", self._exact_filters().to(torch.get_default_dtype()))
        d, k = d_model, num_eigh
        if tensordot:
            self.m_in = nn.Parameter(torch.randn(d, d) / math.sqrt(d))
            # (2k, d): rows 0..k-1 are M_f+, rows k..2k-1 are M_f-
            self.m_filters = nn.Parameter(torch.randn(2 * k, d) / math.sqrt(2 * k))
            self.conv = ffnn.LongConv(d, max_len, filter=self.depthwise_filters)
        else:
            # (d_in, 2k, d_out): m[:, j] is M+_j for j < k and M-_{j-k} after; flattening the
            # first two dimensions matches the (channel, filter) order of the features.
            self.m = nn.Parameter(torch.randn(d, 2 * k, d) / math.sqrt(2 * k * d))
            self.bank = ffnn.FilterBankConv(d, max_len, 2 * k, filter=self.spectral_bank)

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

    def depthwise_filters(self, length: int) -> torch.Tensor:
        """The tensordot form's per-channel filters ``phi^T M_f+ + phi~^T M_f-``: the first
        ``length`` taps, ``(d_model, length)``. (Computed at full length and sliced, so that every
        length gets the same rounding.)"""
        return (self.filters.T @ self.m_filters).T[:, :length]

    def spectral_bank(self, length: int) -> torch.Tensor:
        """The full form's bank ``[phi; phi~]``: the first ``length`` taps, ``(2k, length)``."""
        return self.filters[:, :length]

    def _mix(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., d_model * 2k) -> (..., d_model)`` by the learned M+ and M-."""
        return features @ self.m.reshape(-1, self.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, d_model) -> (batch, length, d_model)``."""
        if self.tensordot:
            return self.conv(x @ self.m_in)
        features = self.bank(x)  # (batch, length, d_model, 2k): channel c, filter j
        return self._mix(features.flatten(2))  # feature c * 2k + j
