"""futurefill: fast, exact auto-regressive generation from convolutional sequence models."""

from futurefill.decoder import Decoder, DecoderOutput
from futurefill.fftconv import causal_conv, futurefill, prompt_conv
from futurefill.generation import GenerationOutput, generate
from futurefill.model import ConvLM, ConvLMConfig
from futurefill.nn import DecodingSession, decoding
from futurefill.online import METHODS, OnlineConv
from futurefill.pretrained import HyenaLM, HyenaLMConfig, load_pretrained

__all__ = [
    "METHODS",
    "ConvLM",
    "ConvLMConfig",
    "Decoder",
    "DecoderOutput",
    "DecodingSession",
    "GenerationOutput",
    "HyenaLM",
    "HyenaLMConfig",
    "OnlineConv",
    "causal_conv",
    "decoding",
    "futurefill",
    "generate",
    "load_pretrained",
    "prompt_conv",
]
__version__ = "0.1.0"
