"""futurefill: fast, exact auto-regressive generation from convolutional sequence models."""

from futurefill.fftconv import causal_conv, futurefill, prompt_conv
from futurefill.online import METHODS, OnlineConv

__all__ = ["METHODS", "OnlineConv", "causal_conv", "futurefill", "prompt_conv"]
__version__ = "0.1.0"
