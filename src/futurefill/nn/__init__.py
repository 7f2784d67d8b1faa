"""futurefill.nn: modules whose decoding state lives in the module, so that any model built from
them generates through its own ``forward``.

==================  =============================================  ==============================
module              computes                                       state in a session
==================  =============================================  ==============================
LongConv            depthwise long causal conv (+ ``D * u`` skip)  an online engine (O(K) cache)
FilterBankConv      every channel with every filter of a bank      one engine for the bank
ShortConv           short causal depthwise conv (kernel k, bias)   the last k - 1 inputs
CausalAttention     attention (GQA, window, ALiBi, softcap)        a key/value cache
==================  =============================================  ==============================

:func:`decoding` opens a session over a model; see :mod:`futurefill.nn.session`.
"""

from futurefill.nn.attention import AttentionState, CausalAttention, rotary
from futurefill.nn.conv import (
    EngineState,
    FilterBankConv,
    FilterLengthError,
    LongConv,
    decaying_filters,
)
from futurefill.nn.session import (
    DecodingModule,
    DecodingSession,
    ModuleState,
    decoding,
    decoding_max_len,
    positions,
)
from futurefill.nn.shortconv import HistoryState, ShortConv

__all__ = [
    "AttentionState",
    "CausalAttention",
    "DecodingModule",
    "DecodingSession",
    "EngineState",
    "FilterBankConv",
    "FilterLengthError",
    "HistoryState",
    "LongConv",
    "ModuleState",
    "ShortConv",
    "decaying_filters",
    "decoding",
    "decoding_max_len",
    "positions",
    "rotary",
]
