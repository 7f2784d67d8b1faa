"""The Hyena operator (Poli et al., arXiv 2302.10866) with implicit long filters: the one
implementation behind the ConvLM's ``hyena`` mixer and the HyenaDNA / safari checkpoints.

Written from the published architecture, in the names of the public checkpoints (``in_proj``,
``short_filter``, ``filter_fn``, ``out_proj``). Order N >= 2 (N - 1 long convolutions), for ``u``
``(batch, length, d_model)``::

    x_0, .., x_{N-1}, v = split(short_filter(in_proj(u)))      N + 1 streams of d_model channels
    for o, x_i in enumerate(x_{N-1}, .., x_1):  v = k_o * (x_i ⊙ v) + D_o ⊙ (x_i ⊙ v)
    y = out_proj(x_0 ⊙ v)

with ``*`` the causal convolution (:class:`futurefill.nn.LongConv`), ``short_filter`` a causal
depthwise convolution (:class:`futurefill.nn.ShortConv`), and the implicit filters::

    k[t, c] = FFN(z[t])[c] * (exp(-t_unit[t] |delta_c|) + shift)      t = 0 .. max_len - 1

``z`` (positional features, :func:`positional_features`) and ``t_unit`` are buffers on a grid of
``max_len`` positions; the FFN is ``Linear(emb_dim, F)``, ``Sin``, ``num_inner_mlps`` x
(``Linear(F, F)``, ``Sin``), ``Linear(F, (N - 1) d_model, bias=False)``, every ``Sin`` being
``sin(freq ⊙ x)`` with one shared ``freq``. The filter of a shorter input is the first
``length`` rows of that grid, so taps never depend on the input's length (FutureFill's premise:
``filter(n) == filter(N)[:, :n]``); decay rates span 1 to 1e-2 over 30% (fastest channel) to
150% (slowest) of the grid.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from futurefill import nn as ffnn

__all__ = ["FILTER_LAYOUTS", "Hyena", "HyenaConfig", "HyenaFilter", "Sin", "positional_features"]

# How the (N - 1) * d_model outputs of the filter FFN (and the D biases) split into orders:
# "order-major" (HyenaDNA's released inference code: index o * d_model + c) or "channel-major"
# (the safari training code: index c * (N - 1) + o). The two agree for order 2.
FILTER_LAYOUTS = ("order-major", "channel-major")


@dataclass(frozen=True)
class HyenaConfig:
    """Every hyper-parameter of a :class:`Hyena` operator that changes its numbers."""

    d_model: int
    max_len: int  # the filters' grid: the longest sequence
    order: int = 2  # N: N + 1 streams, N - 1 long convolutions
    emb_dim: int = 3  # positional features (odd): time + (emb_dim - 1) / 2 cos/sin pairs
    filter_order: int = 64  # width F of the filter FFN
    num_inner_mlps: int = 2
    short_filter_order: int = 3  # kernel of the short depthwise convolution
    activation_freq: float = 1.0
    modulate: bool = True
    modulation_shift: float = 0.05  # HyenaDNA's inference code; safari's training code: 0
    filter_layout: str = "order-major"
    use_bias: bool = True  # the D term
    normalized: bool = False  # filters divided by their L1 norm over channels

    def __post_init__(self) -> None:
        for name in ("d_model", "max_len", "filter_order", "short_filter_order"):
            _check_positive_int(name, getattr(self, name))
        if not isinstance(self.order, int) or isinstance(self.order, bool) or self.order < 2:
            raise ValueError(f"order must be an int >= 2, got {self.order!r}")
        if not isinstance(self.emb_dim, int) or self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be an odd int >= 3, got {self.emb_dim!r}")
        if not isinstance(self.num_inner_mlps, int) or self.num_inner_mlps < 0:
            raise ValueError(f"num_inner_mlps must be an int >= 0, got {self.num_inner_mlps!r}")
        if self.filter_layout not in FILTER_LAYOUTS:
            raise ValueError(
                f"filter_layout must be one of {FILTER_LAYOUTS}, got {self.filter_layout!r}"
            )
        for name in ("activation_freq", "modulation_shift"):
            check_finite(name, getattr(self, name))


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_finite(name: str, value: object) -> None:
    """ValueError unless ``value`` is a finite int or float (not a bool)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def positional_features(emb_dim: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The filters' inputs: ``z`` ``(1, seq_len, emb_dim)`` and ``t_unit`` ``(1, seq_len, 1)``.

    ``t_unit = linspace(0, 1, seq_len)``; ``z = [t_unit, cos(f_j w), -sin(f_j w)]`` with
    ``w = 2 pi t / seq_len`` and ``(emb_dim - 1) / 2`` frequencies ``f = linspace(1e-4, bands - 1,
    bands)``: the real and imaginary parts of ``exp(-i f w)``. Checkpoints store both (loaded, not
    recomputed); this builds a fresh model's.
    """
    bands = (emb_dim - 1) // 2
    t_unit = torch.linspace(0, 1, seq_len)[None, :, None]
    w = 2 * math.pi * torch.linspace(0, seq_len - 1, seq_len)[None, :, None] / seq_len
    f = torch.linspace(1e-4, bands - 1, bands)[None, None]
    return torch.cat([t_unit, torch.cos(f * w), -torch.sin(f * w)], dim=-1), t_unit


class Sin(nn.Module):
    """``sin(freq ⊙ x)``; ``freq`` ``(1, features)``. One instance serves every activation of a
    filter FFN, so its ``freq`` appears under each of their names in the state dict."""

    def __init__(self, features: int, freq: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((1, features), float(freq)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class _Buffers(nn.Module):
    """A named holder of buffers (keeps the checkpoints' ``pos_emb.z``, ``modulation.deltas``)."""

    def __init__(self, **buffers: torch.Tensor):
        super().__init__()
        for name, value in buffers.items():
            self.register_buffer(name, value)


class HyenaFilter(nn.Module):
    """The implicit long filters of one operator and their ``D`` biases (``bias``).

    ``forward(length)`` gives all ``(N - 1) * d_model`` filters ``(length, (N - 1) d_model)``;
    :meth:`order_taps` the ``d_model`` filters of one order, ``(d_model, length)``.
    """

    def __init__(self, config: HyenaConfig):
        super().__init__()
        self.config = config
        channels = config.d_model * (config.order - 1)
        self.bias = nn.Parameter(torch.randn(channels))
        z, t_unit = positional_features(config.emb_dim, config.max_len)
        self.pos_emb = _Buffers(z=z, t=t_unit)
        width, act = config.filter_order, Sin(config.filter_order, config.activation_freq)
        layers: list[nn.Module] = [nn.Linear(config.emb_dim, width), act]
        for _ in range(config.num_inner_mlps):
            layers += [nn.Linear(width, width), act]
        layers.append(nn.Linear(width, channels, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        fast, slow, target = 0.3, 1.5, 1e-2
        deltas = torch.linspace(math.log(target) / slow, math.log(target) / fast, channels)
        self.modulation = _Buffers(deltas=deltas[None, None])

    def forward(self, length: int) -> torch.Tensor:
        """``(length, (N - 1) * d_model)``: the filters' first ``length`` taps."""
        h = self.implicit_filter(self.pos_emb.z[0, :length])
        if self.config.modulate:
            decay = torch.exp(-self.pos_emb.t[0, :length] * self.modulation.deltas[0].abs())
            h = h * (decay + self.config.modulation_shift)
        if self.config.normalized:
            h = h / h.abs().sum(dim=-1, keepdim=True)
        return h

    def _select(self, x: torch.Tensor, o: int) -> torch.Tensor:
        """Order ``o``'s ``d_model`` entries of the last axis of ``x``."""
        if self.config.filter_layout == "order-major":
            d = self.config.d_model
            return x[..., o * d : (o + 1) * d]
        return x[..., o :: self.config.order - 1]

    def order_taps(self, o: int, length: int) -> torch.Tensor:
        """``(d_model, length)``: the long filters of order ``o``."""
        return self._select(self(length), o).T

    def order_bias(self, o: int) -> torch.Tensor | None:
        """``(d_model,)``: the ``D`` of order ``o`` (None without ``use_bias``)."""
        return self._select(self.bias, o) if self.config.use_bias else None


class Hyena(nn.Module):
    """The Hyena operator (see the module docstring): ``(batch, length, d_model)`` to the same,
    ``length <= config.max_len``.

    Examples
    --------
    >>> layer = Hyena(HyenaConfig(d_model=8, max_len=64, order=3))
    >>> layer(torch.randn(2, 10, 8)).shape
    torch.Size([2, 10, 8])
    """

    def __init__(self, config: HyenaConfig):
        super().__init__()
        d, n = config.d_model, config.order
        self.d_model = d
        self.in_proj = nn.Linear(d, (n + 1) * d)
        self.short_filter = ffnn.ShortConv((n + 1) * d, config.short_filter_order)
        self.filter_fn = HyenaFilter(config)
        self.long = nn.ModuleList(
            ffnn.LongConv(d, config.max_len, filter=functools.partial(self._taps, o))
            for o in range(n - 1)
        )
        self.out_proj = nn.Linear(d, d)

    def _taps(self, o: int, length: int) -> torch.Tensor:
        return self.filter_fn.order_taps(o, length)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        *x, v = self.short_filter(self.in_proj(u)).split(self.d_model, dim=-1)
        for o, x_i in enumerate(reversed(x[1:])):
            v = v * x_i
            bias = self.filter_fn.order_bias(o)
            y = self.long[o](v)
            v = y if bias is None else torch.addcmul(y, bias, v)
        return self.out_proj(v * x[0])
