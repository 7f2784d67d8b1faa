"""The short causal depthwise convolution and its ring-buffer decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from futurefill.layers import ShortConv
from reference import rel_err


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
@pytest.mark.parametrize("prompt_len", [0, 1, 2, 3, 7])
def test_ring_buffer_decoding_matches_forward(kernel_size, prompt_len):
    torch.manual_seed(0)
    conv = ShortConv(4, kernel_size).double()
    x = torch.randn(3, 12, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = conv(x)
        cache = conv.setup_cache(3)
        for _ in range(2):  # a reset cache behaves as a fresh one
            outputs = [conv.prefill(x[:, :prompt_len], cache)] if prompt_len else []
            outputs += [conv.step(x[:, t], cache).unsqueeze(1) for t in range(prompt_len, 12)]
            assert cache.position == 12
            assert rel_err(torch.cat(outputs, dim=1), expected) < 1e-14
            cache.reset()
            assert cache.position == 0


def test_ring_buffer_is_small_and_on_the_layer_dtype():
    conv = ShortConv(5, 3).to(torch.float32)
    cache = conv.setup_cache(2)
    assert cache.inputs.shape == (2, 2, 5)
    assert cache.inputs.dtype == torch.float32
    assert cache.nbytes == 2 * 2 * 5 * 4


def test_kernel_size_must_be_positive():
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        ShortConv(3, 0)
