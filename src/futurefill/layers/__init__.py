"""Causal sequence-mixing layers with a parallel (FFT) forward and an online decode path.

=========  =====================================================  ================================
layer      mixing                                                 decode engines
=========  =====================================================  ================================
LongConv   explicit per-channel filters                           1 x d_model channels
STU        spectral filters, full form (M+ and M-)                1 x d_model * 2k channels
STU        tensordot approximation (``tensordot=True``)           1 x d_model channels
Hyena      order N: implicit filters, gating, short convs         N x d_model channels + ring
=========  =====================================================  ================================
"""

from futurefill.layers.base import Mixer, MixerCache
from futurefill.layers.hyena import Hyena, HyenaFilter
from futurefill.layers.longconv import LongConv
from futurefill.layers.shortconv import ShortConv, ShortConvCache
from futurefill.layers.spectral import hankel_matrix, spectral_filters, top_eigenpairs
from futurefill.layers.stu import STU

__all__ = [
    "STU",
    "Hyena",
    "HyenaFilter",
    "LongConv",
    "Mixer",
    "MixerCache",
    "ShortConv",
    "ShortConvCache",
    "hankel_matrix",
    "spectral_filters",
    "top_eigenpairs",
]
