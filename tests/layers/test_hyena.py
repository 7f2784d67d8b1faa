"""Hyena: the order-N recurrence against a plain reference, and the implicit filters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from futurefill.layers import Hyena, HyenaFilter
from reference import reference_conv, rel_err

D, L = 4, 32


def reference_hyena(layer: Hyena, u: np.ndarray) -> np.ndarray:
    """The module docstring's equations with loops and numpy.convolve, float64."""
    w_in, b_in = layer.in_proj.weight.detach().numpy(), layer.in_proj.bias.detach().numpy()
    z = u @ w_in.T + b_in  # (B, T, (N+1) D)
    weight, bias = layer.short.weight.detach().numpy(), layer.short.bias.detach().numpy()
    short = np.zeros_like(z) + bias
    for t in range(z.shape[1]):
        for j in range(weight.shape[1]):
            if t - j >= 0:
                short[:, t] += weight[:, j] * z[:, t - j]
    streams = np.split(short, layer.order + 1, axis=-1)
    v = streams[0]
    for n in range(layer.order):
        h = layer.filter(L, n).detach().numpy()
        conv = reference_conv(v.transpose(0, 2, 1), h).transpose(0, 2, 1)
        v = streams[n + 1] * (conv + layer.bias[n].detach().numpy() * v)
    return v @ layer.out_proj.weight.detach().numpy().T + layer.out_proj.bias.detach().numpy()


@pytest.mark.parametrize(("order", "kernel"), [(1, 3), (2, 3), (3, 2)])
def test_forward_matches_reference(order, kernel):
    torch.manual_seed(order)
    layer = Hyena(D, L, order, short_kernel=kernel, filter_hidden=8, pos_dim=5).double()
    u = torch.randn(2, 19, D, dtype=torch.float64)
    with torch.no_grad():
        y = layer(u)
    assert rel_err(y, reference_hyena(layer, u.numpy())) < 1e-12


def test_implicit_filters_shapes_and_prefix_consistency():
    torch.manual_seed(0)
    filt = HyenaFilter(D, 3, L, pos_dim=7, hidden=16).double()
    with torch.no_grad():
        for n in range(3):
            full = filt(L, n)
            assert full.shape == (D, L)
            torch.testing.assert_close(filt(10, n), full[..., :10], rtol=1e-14, atol=0)


def test_positional_features():
    filt = HyenaFilter(D, 2, L, pos_dim=5, hidden=8)
    pos = filt.pos.double()
    assert pos.shape == (L, 5)
    torch.testing.assert_close(pos[:, 0], torch.linspace(0, 1, L, dtype=torch.float64))
    torch.testing.assert_close(
        pos[:, 1:3].square() + pos[:, 3:5].square(), torch.ones(L, 2).double()
    )


def test_decay_window_spans_the_reference_rates():
    """Channels decay to 1e-2 over 30% (fastest) to 150% (slowest) of the filter length."""
    filt = HyenaFilter(D, 2, L, pos_dim=5, hidden=8).double()
    window = filt.window
    assert torch.equal(window[:, 0], torch.ones(D, dtype=torch.float64))
    assert (window[:, 1:] < window[:, :-1]).all()
    end = window[:, -1]
    assert end[0] == pytest.approx(math.exp(math.log(1e-2) / 1.5), rel=1e-6)  # slowest
    assert end[-1] == pytest.approx(math.exp(math.log(1e-2) / 0.3), rel=1e-6)  # fastest
    # Filters are the FFN of the positional features under the window: the fastest channel's
    # filters vanish at the end.
    with torch.no_grad():
        h = torch.stack([filt(L, n) for n in range(2)])
        ffn = filt.ffn(filt.pos).T.reshape(2, D, L)  # order n: output rows n*D .. (n+1)*D - 1
    assert rel_err(h, ffn * window) < 1e-14
    assert h[:, -1, -4:].abs().max() < 1e-4 * h[:, -1].abs().max()


def test_filter_argument_errors():
    with pytest.raises(ValueError, match="pos_dim must be odd"):
        HyenaFilter(D, 2, L, pos_dim=4, hidden=8)
    with pytest.raises(ValueError, match="order must be >= 1"):
        Hyena(D, L, 0)
