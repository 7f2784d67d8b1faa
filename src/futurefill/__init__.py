"""futurefill: fast, exact auto-regressive generation from convolutional sequence models."""

from futurefill.fftconv import causal_conv, futurefill, prompt_conv
from futurefill.generation import GenerationOutput, generate
from futurefill.model import ConvLM, ConvLMConfig
from futurefill.nn import DecodingSession, decoding
from futurefill.online import METHODS, OnlineConv

__all__ = [
    "METHODS",
    "ConvLM",
    "ConvLMConfig",
    "DecodingSession",
    "GenerationOutput",
    "OnlineConv",
    "causal_conv",
    "decoding",
    "futurefill",
    "generate",
    "prompt_conv",
]
__version__ = "0.1.0"
