"""SlicedConv: a block's FFT convolution as the passes of a four-step FFT, against numpy."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill.fourstep import SlicedConv
from reference import rel_err


def aliased_convolution(x: np.ndarray, g: np.ndarray, n: int) -> np.ndarray:
    """The linear convolution of every row with its channel's filter, wrapped onto n points."""
    batch, channels, _ = x.shape
    out = np.zeros((batch, channels, n))
    for b in range(batch):
        for c in range(channels):
            full = np.convolve(x[b, c], g[c])
            for i, value in enumerate(full):
                out[b, c, i % n] += value
    return out


def run_passes(plan: SlicedConv, x: torch.Tensor, starts: list[int]) -> list[torch.Tensor]:
    m = x.shape[-1]
    outs = [torch.zeros(*x.shape[:2], m, dtype=x.dtype) for _ in starts]
    for p in plan.passes(x, list(zip(starts, outs, strict=True))):
        for i in reversed(range(p.count)):  # any order within a pass
            p.run(i)
    return outs


@settings(max_examples=40, deadline=None)
@given(
    log_m=st.integers(2, 7),
    factor=st.sampled_from([2, 4]),
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    points=st.sampled_from([1, 7, 64, 1000, 10**7]),
    seed=st.integers(0, 2**16),
)
def test_passes_give_the_fft_convolution(log_m, factor, batch, channels, points, seed):
    m = 2**log_m
    n = factor * m
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, m, generator=gen, dtype=torch.float64)
    g = torch.randn(channels, n - 1, generator=gen, dtype=torch.float64)
    plan = SlicedConv(g, n, batch, points)
    assert plan.four_step == (batch * n > points)
    starts = [m * k for k in range(1, factor)]
    outs = run_passes(plan, x, starts)
    expected = aliased_convolution(x.numpy(), g.numpy(), n)
    for start, out in zip(starts, outs, strict=True):
        assert rel_err(out, expected[..., start : start + m]) < 1e-12


def test_float32_and_views_of_a_longer_buffer():
    """Blocks and outputs as the engine passes them: views into longer buffers."""
    gen = torch.Generator().manual_seed(0)
    buffer = torch.randn(2, 3, 4096, generator=gen)
    g = torch.randn(3, 3 * 1024, generator=gen)
    ring = torch.zeros(2, 3, 4 * 1024)
    plan = SlicedConv(g, 4096, 2, 512)
    assert plan.four_step
    x = buffer[..., 1024:2048]
    targets = [(1024, ring[..., 2048:3072]), (2048, ring[..., 0:1024])]
    for p in plan.passes(x, targets):
        for i in range(p.count):
            p.run(i)
    expected = aliased_convolution(x.double().numpy(), g.double().numpy(), 4096)
    assert rel_err(ring[..., 2048:3072], expected[..., 1024:2048]) < 1e-5
    assert rel_err(ring[..., 0:1024], expected[..., 2048:3072]) < 1e-5
    assert not ring[..., 1024:2048].any() and not ring[..., 3072:].any()
