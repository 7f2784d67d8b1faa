"""LongConvMixer: explicit learnable per-channel causal filters as long as the sequence.

``y = out_proj(h * u + skip ⊙ u)`` with ``h`` (d_model, max_len) a free parameter, ``*`` the
causal convolution of each channel with its own filter, and ``skip`` a per-channel gain
(Fu et al., "Simple Hardware-Efficient Long Convolutions for Sequence Modeling", 2023). Filters
start as :func:`futurefill.nn.decaying_filters` (log-spaced half-lives, unit norm).
"""

from __future__ import annotations

import torch
from torch import nn

from futurefill import nn as ffnn

__all__ = ["LongConvMixer"]

# Names in checkpoints saved before the layer was built on futurefill.nn.
_LEGACY_KEYS = {"filters": "conv.weight", "skip": "conv.skip"}


class LongConvMixer(nn.Module):
    """Long convolution layer with explicit filters (see the module docstring).

    Parameters
    ----------
    d_model : int
    max_len : int
        Filter length (longest sequence).
    """

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.conv = ffnn.LongConv(d_model, max_len, skip=True)
        self.out_proj = nn.Linear(d_model, d_model)
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, d_model) -> (batch, length, d_model)``."""
        return self.out_proj(self.conv(x))


def _rename_legacy_keys(module, state_dict, prefix, *args) -> None:
    for old, new in _LEGACY_KEYS.items():
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
