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

:func:`decoding` opens a session over a model (see :mod:`futurefill.nn.session`);
:func:`positions` gives a module the positions of its input's tokens, in a session or not.

The extension point, for a layer with decoding state of a new kind: subclass
:class:`DecodingModule` (the module) and :class:`ModuleState` (its state, the rows contract);
:class:`Chunk` is what a call of the model feeds (docs/extension.md).
"""

from futurefill.nn.attention import CausalAttention, rotary
from futurefill.nn.conv import FilterBankConv, FilterLengthError, LongConv, decaying_filters
from futurefill.nn.session import (
    DecodingSession,
    RowSnapshot,
    TracedPlan,
    decoding,
    decoding_max_len,
    positions,
    schedule_function,
    traced_step,
    unit_function,
)
from futurefill.nn.shortconv import ShortConv
from futurefill.nn.state import Chunk, DecodingModule, ModuleState

__all__ = [
    "CausalAttention",
    "Chunk",
    "DecodingModule",
    "DecodingSession",
    "FilterBankConv",
    "FilterLengthError",
    "LongConv",
    "ModuleState",
    "RowSnapshot",
    "ShortConv",
    "TracedPlan",
    "decaying_filters",
    "decoding",
    "decoding_max_len",
    "positions",
    "rotary",
    "schedule_function",
    "traced_step",
    "unit_function",
]
