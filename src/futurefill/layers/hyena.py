"""Hyena operator of order N (Poli et al., arXiv 2302.10866) with implicit long filters.

For ``u`` (batch, length, d_model)::

    v, x_1, .., x_N = split(short_conv(in_proj(u)))           N + 1 streams of d_model channels
    z = v
    for n = 1..N:  z = x_n ⊙ (h_n * z + b_n ⊙ z)              * = causal long convolution
    y = out_proj(z)

``short_conv`` is a causal depthwise convolution with kernel 3 (:class:`futurefill.nn.ShortConv`).
The long filters are implicit::

    h_n[c, t] = FFN(pos(t))[n, c] * exp(-|delta_c| t / (L - 1))

with ``pos(t)`` = [t / (L - 1), cos(2 pi f_i t / L), -sin(2 pi f_i t / L)] for ``(pos_dim - 1) / 2``
frequencies f_i, an FFN with sine activations, and per-channel decay rates ``delta_c`` that take
the window from 1 down to 1e-2 over 30% (fastest channel) to 150% (slowest) of the length, as in
the reference implementation (safari). The b_n ⊙ z term is the per-channel skip of its FFT conv.

Decoding: the short conv and the N long convolutions are :mod:`futurefill.nn` modules, so the
forward is also the decode path; each long convolution materialises its filter once per decoding
session (:meth:`HyenaFilter.forward` for its order).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from futurefill import nn as ffnn

__all__ = ["Hyena", "HyenaFilter", "Sin"]


class Sin(nn.Module):
    """``sin(freq ⊙ x)`` with a learnable frequency per feature (initialised to ``freq``)."""

    def __init__(self, features: int, freq: float = 1.0):
        super().__init__()
        self.freq = nn.Parameter(torch.full((features,), float(freq)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """Implicit long filters: positional features -> FFN with sine activations -> decay window.

    Parameters
    ----------
    d_model : int
    order : int
        Number N of filters per channel.
    max_len : int
        Filter length.
    pos_dim : int
        Positional features (odd, >= 3): time plus ``(pos_dim - 1) / 2`` cos/sin pairs.
    hidden : int
        Width of the FFN.

    Buffers (persistent, computed in float64)
    -------
    pos : (max_len, pos_dim)
    window : (d_model, max_len), the exponential decay of each channel.
    """

    def __init__(self, d_model: int, order: int, max_len: int, *, pos_dim: int, hidden: int):
        super().__init__()
        if pos_dim < 3 or pos_dim % 2 == 0:
            raise ValueError(f"pos_dim must be odd and >= 3, got {pos_dim}")
        self.d_model = d_model
        self.order = order
        t = torch.arange(max_len, dtype=torch.float64)
        t_unit = t / max(max_len - 1, 1)  # (max_len,), 0 .. 1
        bands = (pos_dim - 1) // 2
        freqs = torch.linspace(1e-4, bands - 1, bands, dtype=torch.float64)
        angle = 2 * math.pi * t[:, None] * freqs / max_len  # (max_len, bands)
        pos = torch.cat([t_unit[:, None], torch.cos(angle), -torch.sin(angle)], dim=-1)
        target, fast, slow = 1e-2, 0.3, 1.5
        rates = torch.linspace(math.log(target) / slow, math.log(target) / fast, d_model).abs()
        window = torch.exp(-rates.to(torch.float64)[:, None] * t_unit)  # (d_model, max_len)
        dtype = torch.get_default_dtype()
        self.register_buffer("pos", pos.to(dtype))
        self.register_buffer("window", window.to(dtype))
        self.ffn = nn.Sequential(
            nn.Linear(pos_dim, hidden),
            Sin(hidden),
            nn.Linear(hidden, hidden),
            Sin(hidden),
            nn.Linear(hidden, order * d_model, bias=False),
        )

    def forward(self, length: int, n: int) -> torch.Tensor:
        """The first ``length`` taps of the filters of order ``n``, ``(d_model, length)``.

        The FFN's hidden features are shared by the orders; its last layer's rows
        ``n * d_model .. (n + 1) * d_model - 1`` give order n.
        """
        *trunk, last = self.ffn
        hidden = self.pos[:length]
        for layer in trunk:
            hidden = layer(hidden)  # (length, hidden)
        rows = last.weight[n * self.d_model : (n + 1) * self.d_model]
        return F.linear(hidden, rows).T * self.window[:, :length]


class Hyena(nn.Module):
    """Hyena operator of order N (see the module docstring).

    Parameters
    ----------
    d_model : int
    max_len : int
        Filter length (longest sequence).
    order : int
        N, the number of long convolutions and gates.
    filter_hidden : int
        Width of the implicit filters' FFN.
    pos_dim : int
        Positional features fed to that FFN.
    short_kernel : int
        Kernel of the short depthwise convolution.
    """

    def __init__(
        self,
        d_model: int,
        max_len: int,
        order: int = 2,
        *,
        filter_hidden: int = 64,
        pos_dim: int = 17,
        short_kernel: int = 3,
    ):
        super().__init__()
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        self.d_model = d_model
        self.order = order
        self.in_proj = nn.Linear(d_model, (order + 1) * d_model)
        self.short = ffnn.ShortConv((order + 1) * d_model, short_kernel)
        self.filter = HyenaFilter(d_model, order, max_len, pos_dim=pos_dim, hidden=filter_hidden)
        self.long = nn.ModuleList(
            ffnn.LongConv(d_model, max_len, filter=functools.partial(self._order_filter, n))
            for n in range(order)
        )
        self.bias = nn.Parameter(torch.randn(order, d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def _order_filter(self, n: int, length: int) -> torch.Tensor:
        return self.filter(length, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, d_model) -> (batch, length, d_model)``."""
        v, *gates = self.short(self.in_proj(x)).split(self.d_model, dim=-1)
        for n, gate in enumerate(gates):
            v = gate * torch.addcmul(self.long[n](v), self.bias[n], v)
        return self.out_proj(v)
