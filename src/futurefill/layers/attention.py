"""An attention mixer for hybrid models: projections around :class:`futurefill.nn.CausalAttention`.

For ``x`` ``(batch, length, d_model)``: ``q = W_q x`` (``heads`` heads), ``k, v = W_kv x``
(``kv_heads`` heads: grouped-query attention when fewer), rotary embeddings on q and k when
asked, causal attention (sliding ``window``, ALiBi slopes, logit ``softcap``), ``W_o`` back to
``d_model``. The shapes of Flash STU's attention (sliding window, ALiBi, softcap) and of
StripedHyena's (rotary, grouped KV) are both options of this one layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from futurefill import nn as ffnn

__all__ = ["Attention", "alibi_slopes"]


def alibi_slopes(heads: int, factor: float = 1.0) -> torch.Tensor:
    """ALiBi's slopes ``(heads,)``: the geometric sequence ``2^(-8 (i + 1) / n)`` for a power of
    two ``n = heads``; otherwise the closest power of two's, extended by every other slope of
    twice that many (the published interleaving), all times ``factor`` (Flash STU: 0.25)."""

    def powers(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    below = 2 ** int(math.log2(heads))
    slopes = powers(below) + powers(2 * below)[0::2][: heads - below]
    return torch.tensor(slopes) * factor


class Attention(nn.Module):
    """Attention mixer ``(batch, length, d_model) -> (batch, length, d_model)``.

    Parameters
    ----------
    d_model, heads : int
    kv_heads : int, optional
        Key/value heads (dividing ``heads``); default ``heads``.
    window : int, optional
        Sliding window (positions before the current one each query sees).
    alibi : float, optional
        ALiBi with :func:`alibi_slopes` times this factor.
    softcap : float, optional
    rotary : float, optional
        Rotary embeddings with this base (10000 for StripedHyena 1, 1e6 for Evo 2).
    rotary_scale : float
        Rotary positions divided by this (linear interpolation: Evo 2's long-context models).
    bias, out_bias : bool
        Biases on the projections in (``q``, ``kv``), and on the one out.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        kv_heads: int | None = None,
        *,
        window: int | None = None,
        alibi: float | None = None,
        softcap: float | None = None,
        rotary: float | None = None,
        rotary_scale: float = 1.0,
        bias: bool = True,
        out_bias: bool = True,
    ):
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        if d_model % heads or heads % kv_heads:
            raise ValueError(
                f"heads must divide d_model and kv_heads heads: d_model={d_model}, "
                f"heads={heads}, kv_heads={kv_heads}"
            )
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d_model // heads
        self.rotary, self.rotary_scale = rotary, rotary_scale
        self.q = nn.Linear(d_model, d_model, bias=bias)
        self.kv = nn.Linear(d_model, 2 * kv_heads * self.head_dim, bias=bias)
        slopes = None if alibi is None else alibi_slopes(heads, alibi)
        self.attn = ffnn.CausalAttention(window=window, alibi=slopes, softcap=softcap)
        self.out = nn.Linear(d_model, d_model, bias=out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, self.heads, self.head_dim)
        k, v = self.kv(x).view(batch, length, 2 * self.kv_heads, self.head_dim).chunk(2, dim=2)
        if self.rotary is not None:
            positions = ffnn.positions(self, x)
            q = ffnn.rotary(q, positions, self.rotary, self.rotary_scale)
            k = ffnn.rotary(k, positions, self.rotary, self.rotary_scale)
        return self.out(self.attn(q, k, v).reshape(batch, length, -1))
