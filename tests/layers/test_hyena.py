"""Hyena: the order-N recurrence against a plain numpy reference of the module docstring's
equations, both filter layouts, and the implicit filters (prefix consistency, decay, features)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from futurefill.layers import Hyena, HyenaConfig, HyenaFilter
from futurefill.layers.hyena import positional_features
from reference import reference_conv, rel_err

D, L = 4, 32


def reference_hyena(layer: Hyena, u: np.ndarray) -> np.ndarray:
    """The docstring's equations with loops and numpy, float64 (filters from ``filter_fn``)."""
    config = layer.filter_fn.config
    w_in, b_in = layer.in_proj.weight.detach().numpy(), layer.in_proj.bias.detach().numpy()
    z = u @ w_in.T + b_in  # (B, T, (N+1) D)
    weight = layer.short_filter.weight.detach().numpy()
    short = np.zeros_like(z) + layer.short_filter.bias.detach().numpy()
    for t in range(z.shape[1]):
        for j in range(weight.shape[1]):
            if t - j >= 0:
                short[:, t] += weight[:, j] * z[:, t - j]
    *x, v = np.split(short, config.order + 1, axis=-1)
    filters = layer.filter_fn(L).detach().numpy().T  # ((N-1) D, L)
    bias = layer.filter_fn.bias.detach().numpy()
    for o, x_i in enumerate(reversed(x[1:])):
        rows = (
            slice(o * D, (o + 1) * D)
            if config.filter_layout == "order-major"
            else slice(o, None, config.order - 1)
        )
        v = v * x_i
        conv = reference_conv(v.transpose(0, 2, 1), filters[rows]).transpose(0, 2, 1)
        v = conv + bias[rows] * v if config.use_bias else conv
    w_out, b_out = layer.out_proj.weight.detach().numpy(), layer.out_proj.bias.detach().numpy()
    return (v * x[0]) @ w_out.T + b_out


@pytest.mark.parametrize(
    ("order", "kernel", "layout", "use_bias"),
    [
        (2, 3, "order-major", True),
        (3, 2, "order-major", True),
        (3, 4, "channel-major", False),
        (4, 1, "channel-major", True),
    ],
)
def test_forward_matches_reference(order, kernel, layout, use_bias):
    torch.manual_seed(order)
    config = HyenaConfig(
        d_model=D,
        max_len=L,
        order=order,
        short_filter_order=kernel,
        filter_order=8,
        emb_dim=5,
        filter_layout=layout,
        use_bias=use_bias,
    )
    layer = Hyena(config).double()
    u = torch.randn(2, 19, D, dtype=torch.float64)
    with torch.no_grad():
        y = layer(u)
    assert rel_err(y, reference_hyena(layer, u.numpy())) < 1e-12


@pytest.mark.parametrize("normalized", [False, True])
def test_implicit_filters_are_prefixes_of_the_grid(normalized):
    """filter(n) == filter(N)[:, :n]: the taps never depend on the input's length."""
    torch.manual_seed(0)
    config = HyenaConfig(d_model=D, max_len=L, order=4, emb_dim=7, normalized=normalized)
    filt = HyenaFilter(config).double()
    with torch.no_grad():
        for o in range(3):
            full = filt.order_taps(o, L)
            assert full.shape == (D, L)
            # The same FFN on 10 rows and on L rows: one BLAS may block (and round) the two
            # products differently (2e-14 apart on an AMD EPYC), so equal to float64 rounding of
            # sums of filter_order (64) terms, relative to the taps' scale, not bit for bit.
            scale = float(full.abs().max())
            torch.testing.assert_close(
                filt.order_taps(o, 10), full[:, :10], rtol=1e-12, atol=1e-12 * scale
            )


def test_positional_features():
    z, t = positional_features(5, L)
    assert z.shape == (1, L, 5) and t.shape == (1, L, 1)
    torch.testing.assert_close(z[0, :, 0], torch.linspace(0, 1, L))
    torch.testing.assert_close(z[0, :, 1:3].square() + z[0, :, 3:5].square(), torch.ones(L, 2))


def test_decay_spans_the_reference_rates():
    """Channels decay to 1e-2 over 30% (fastest) to 150% (slowest) of the grid, plus the
    shift: the filters are the FFN of the features under ``exp(-t |delta|) + shift``."""
    config = HyenaConfig(d_model=D, max_len=L, order=2, modulation_shift=0.0)
    filt = HyenaFilter(config).double()
    deltas = filt.modulation.deltas[0, 0].abs()
    assert float(deltas.min()) == pytest.approx(-math.log(1e-2) / 1.5, rel=1e-6)
    assert float(deltas.max()) == pytest.approx(-math.log(1e-2) / 0.3, rel=1e-6)
    with torch.no_grad():
        h = filt(L)
        ffn = filt.implicit_filter(filt.pos_emb.z[0])
    window = torch.exp(-filt.pos_emb.t[0] * deltas)
    assert rel_err(h, ffn * window) < 1e-14


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"order": 1}, "order must be an int >= 2"),
        ({"emb_dim": 4}, "emb_dim must be an odd int >= 3"),
        ({"filter_layout": "rows"}, "filter_layout must be one of"),
        ({"max_len": 0}, "max_len must be an int >= 1"),
        ({"num_inner_mlps": -1}, "num_inner_mlps must be an int >= 0"),
        ({"modulation_shift": float("nan")}, "modulation_shift must be a finite number"),
    ],
)
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        HyenaConfig(**{"d_model": D, "max_len": L, **change})
