"""LongConv: explicit learnable per-channel causal filters as long as the sequence.

``y = out_proj(h * u + skip ⊙ u)`` with ``h`` (d_model, max_len) a free parameter, ``*`` the
causal convolution of each channel with its own filter, and ``skip`` a per-channel gain
(Fu et al., "Simple Hardware-Efficient Long Convolutions for Sequence Modeling", 2023).

Initialisation: Gaussian noise under an exponential decay ``2^(-t / half_life_c)`` with half-lives
log-spaced from 1 to ``max_len`` across channels (short and long memories side by side), each
filter then scaled to unit L2 norm so that the output has the input's scale.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from futurefill.fftconv import causal_conv
from futurefill.layers.base import Mixer, MixerCache

__all__ = ["LongConv", "decaying_filters"]


def decaying_filters(channels: int, length: int) -> torch.Tensor:
    """Random unit-norm filters ``(channels, length)`` with log-spaced half-lives in [1, length]."""
    t = torch.arange(length, dtype=torch.float64)
    half_lives = torch.logspace(0.0, math.log10(max(length, 1)), channels, dtype=torch.float64)
    window = torch.exp2(-t / half_lives[:, None])  # (channels, length)
    h = torch.randn(channels, length, dtype=torch.float64) * window
    return (h / h.norm(dim=-1, keepdim=True)).to(torch.get_default_dtype())


class LongConv(Mixer):
    """Long convolution layer with explicit filters (see the module docstring).

    Parameters
    ----------
    d_model : int
    max_len : int
        Filter length (longest sequence).

    Decoding runs one engine over the ``d_model`` channels.
    """

    def __init__(self, d_model: int, max_len: int):
        super().__init__(d_model, max_len)
        self.filters = nn.Parameter(decaying_filters(d_model, max_len))
        self.skip = nn.Parameter(torch.ones(d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def long_filters(self) -> list[torch.Tensor]:
        return [self.filters]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, d_model) -> (batch, length, d_model)``, by FFT."""
        self._check_length(x)
        y = causal_conv(x.transpose(1, 2), self.filters).transpose(1, 2)
        return self.out_proj(torch.addcmul(y, self.skip, x))

    @torch.no_grad()
    def prefill(self, x: torch.Tensor, cache: MixerCache) -> torch.Tensor:
        self._check_length(x)
        (engine,) = cache.engines
        y = engine.prefill(x.transpose(1, 2)).transpose(1, 2)
        return self.out_proj(torch.addcmul(y, self.skip, x))

    @torch.no_grad()
    def step(self, x_t: torch.Tensor, cache: MixerCache) -> torch.Tensor:
        (engine,) = cache.engines
        return self.out_proj(torch.addcmul(engine.step(x_t), self.skip, x_t))
