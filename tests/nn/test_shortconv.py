"""The short causal depthwise convolution and its decoding with a history buffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from futurefill import decoding
from futurefill.nn import ShortConv
from reference import decode_chunks, rel_err


def reference_short_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Plain loop: y[b, t, c] = bias[c] + sum_j weight[c, j] x[b, t - j, c] (zero before 0)."""
    y = np.empty_like(x)
    for t in range(x.shape[1]):
        y[:, t] = bias
        for j in range(weight.shape[1]):
            if t - j >= 0:
                y[:, t] += weight[:, j] * x[:, t - j]
    return y


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
def test_forward_matches_loop(kernel_size):
    torch.manual_seed(kernel_size)
    conv = ShortConv(6, kernel_size).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x)
    ref = reference_short_conv(x.numpy(), conv.weight.detach().numpy(), conv.bias.detach().numpy())
    assert rel_err(y, ref) < 1e-14


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
@pytest.mark.parametrize(
    ("prompt_len", "chunk"), [(0, 1), (1, 1), (2, 1), (3, 1), (7, 1), (0, 5), (2, 12)]
)
def test_session_decoding_matches_forward(kernel_size, prompt_len, chunk):
    torch.manual_seed(0)
    conv = ShortConv(4, kernel_size).double()
    x = torch.randn(3, 12, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = conv(x)
    y, _ = decode_chunks(conv, x, prompt_len, chunk=chunk, max_len=12)
    assert rel_err(y, expected) < 1e-14


def test_reset_zeroes_the_history():
    torch.manual_seed(0)
    conv = ShortConv(4, 3).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    with torch.no_grad(), decoding(conv, batch_size=2, max_len=9) as session:
        first = torch.cat([conv(x[:, :4]), conv(x[:, 4:])], dim=1)
        session.reset()
        assert session.position == 0
        assert torch.equal(torch.cat([conv(x[:, :4]), conv(x[:, 4:])], dim=1), first)


def test_history_is_small_and_on_the_layer_dtype():
    conv = ShortConv(5, 3).to(torch.float32)
    with decoding(conv, batch_size=2, max_len=100) as session:
        (state,) = session.states.values()
        assert state.history.shape == (2, 2, 5)
        assert state.history.dtype == torch.float32
        assert session.nbytes == 2 * 2 * 5 * 4


def test_kernel_size_must_be_positive():
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        ShortConv(3, 0)
