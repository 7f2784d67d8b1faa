"""LongConvMixer: explicit filters, against a numpy reference, and its decaying initialisation."""

from __future__ import annotations

import numpy as np
import torch

from futurefill.layers import LongConvMixer
from futurefill.nn import decaying_filters
from reference import reference_conv, rel_err


def test_forward_matches_reference():
    torch.manual_seed(0)
    layer = LongConvMixer(5, 30).double()
    x = torch.randn(2, 17, 5, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
    h = layer.conv.weight.detach().numpy()
    conv = reference_conv(x.numpy().transpose(0, 2, 1), h).transpose(0, 2, 1)  # (B, T, D)
    mixed = conv + layer.conv.skip.detach().numpy() * x.numpy()
    ref = mixed @ layer.out_proj.weight.detach().numpy().T + layer.out_proj.bias.detach().numpy()
    assert rel_err(y, ref) < 1e-12


def test_initial_filters_are_unit_norm_and_decay():
    torch.manual_seed(0)
    h = decaying_filters(16, 256).double()
    np.testing.assert_allclose(h.norm(dim=1).numpy(), 1.0, rtol=1e-6)
    energy = h.square()
    # Every channel puts more energy in the first half than the second (half-lives <= length).
    assert (energy[:, :128].sum(1) > energy[:, 128:].sum(1)).all()
    # Half-lives grow across channels: the fastest channel is gone after 32 taps, the slowest not.
    assert energy[0, 32:].sum() < 1e-12
    assert energy[-1, 128:].sum() > 0.1


def test_filters_follow_the_default_dtype():
    torch.set_default_dtype(torch.float64)
    try:
        assert LongConvMixer(3, 8).conv.weight.dtype == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    assert LongConvMixer(3, 8).conv.weight.dtype == torch.float32


def test_checkpoints_from_before_futurefill_nn_load():
    """Saved with the layer's own ``filters`` and ``skip``: renamed to ``conv.weight/skip``."""
    torch.manual_seed(0)
    layer = LongConvMixer(3, 8)
    state = layer.state_dict()
    legacy = {
        ("filters" if k == "conv.weight" else "skip" if k == "conv.skip" else k): v
        for k, v in state.items()
    }
    assert "filters" in legacy and "skip" in legacy
    loaded = LongConvMixer(3, 8)
    loaded.load_state_dict(legacy)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
