"""Causal sequence-mixing layers built from :mod:`futurefill.nn`: one forward each.

Every layer maps ``(batch, length, d_model)`` to the same shape causally. Its long and short
convolutions are futurefill.nn modules, so inside a decoding session (:func:`futurefill.decoding`)
the same forward continues the sequence one chunk at a time through the online engines.

=============  ================================================  ================================
layer          mixing                                            futurefill.nn modules
=============  ================================================  ================================
LongConvMixer  explicit per-channel filters, ``D * u`` skip      LongConv (d_model channels)
STU            spectral filters, full form (M+ and M-)           FilterBankConv (2k filters)
STU            tensordot approximation (``tensordot=True``)      LongConv, implicit filter
Hyena          order N: implicit filters, gating, short conv     ShortConv + (N - 1) x LongConv
Attention      GQA, window, ALiBi, softcap, rotary (hybrids)     CausalAttention (a KV cache)
=============  ================================================  ================================
"""

from futurefill.layers.attention import Attention, alibi_slopes
from futurefill.layers.hyena import Hyena, HyenaConfig, HyenaFilter
from futurefill.layers.longconv import LongConvMixer
from futurefill.layers.spectral import hankel_matrix, spectral_filters, top_eigenpairs
from futurefill.layers.stu import STU

__all__ = [
    "STU",
    "Attention",
    "Hyena",
    "HyenaConfig",
    "HyenaFilter",
    "LongConvMixer",
    "alibi_slopes",
    "hankel_matrix",
    "spectral_filters",
    "top_eigenpairs",
]
