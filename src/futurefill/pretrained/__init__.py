"""Public checkpoints: :func:`load_pretrained` reads a local directory (HyenaDNA's Hugging Face
port or original release, the safari Hyena LMs, Evo 2 and Evo 1, futurefill's own ConvLM and
HyenaLM, the bundled model by default) into a model that :func:`futurefill.generate` decodes
exactly with every method."""

from futurefill.pretrained.formats import (
    FORMATS,
    CheckpointError,
    bundled_checkpoint_dir,
    detect_format,
    load_pretrained,
)
from futurefill.pretrained.hyena_lm import HyenaLM, HyenaLMConfig
from futurefill.pretrained.striped_hyena import StripedHyena, StripedHyenaConfig

__all__ = [
    "FORMATS",
    "CheckpointError",
    "HyenaLM",
    "HyenaLMConfig",
    "StripedHyena",
    "StripedHyenaConfig",
    "bundled_checkpoint_dir",
    "detect_format",
    "load_pretrained",
]
