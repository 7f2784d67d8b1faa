"""SlicedConv: a job's FFT convolution (a block's own term and a kept block's) in slices and as
the passes of a four-step FFT, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill.fourstep import SlicedConv, run_passes
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


def in_any_order(passes):
    for p in passes:
        for i in reversed(range(p.count)):  # any order within a pass
            p.run(i)


@settings(max_examples=40, deadline=None)
@given(
    log_m=st.integers(2, 7),
    factor=st.sampled_from([2, 4]),
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    points=st.sampled_from([1, 7, 64, 1000, 10**7]),
    seed=st.integers(0, 2**16),
)
def test_a_kept_spectrum_and_its_partner_give_the_fft_convolution(
    log_m, factor, batch, channels, points, seed
):
    """Job 1 writes x1 * g0 and keeps x1's spectrum; job 2 writes x2 * g0 + x1 * g1."""
    m = 2**log_m
    n = factor * m
    gen = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(2, batch, channels, m, generator=gen, dtype=torch.float64)
    g = torch.randn(2, channels, n - 1, generator=gen, dtype=torch.float64)
    plan = SlicedConv(g, n, batch, points)
    assert plan.four_step == (batch * n > points)
    kept = torch.full((plan.spectrum_size,), torch.nan, dtype=torch.complex128)
    start = m * (factor - 1)
    out1, out2 = torch.full((2, batch, channels, m), torch.nan, dtype=torch.float64)
    in_any_order(plan.passes(x1, start, out1, keep=kept))
    in_any_order(plan.passes(x2, start, out2, previous=kept))
    own = aliased_convolution(x1.numpy(), g[0].numpy(), n)
    assert rel_err(out1, own[..., start : start + m]) < 1e-12
    both = aliased_convolution(x2.numpy(), g[0].numpy(), n)
    both += aliased_convolution(x1.numpy(), g[1].numpy(), n)
    assert rel_err(out2, both[..., start : start + m]) < 1e-12


def test_float32_and_views_of_a_longer_buffer():
    """Blocks and outputs as the engine passes them: views into longer buffers; the output
    written, the rest of its buffer untouched."""
    gen = torch.Generator().manual_seed(0)
    buffer = torch.randn(2, 3, 4096, generator=gen)
    g = torch.randn(1, 3, 2048, generator=gen)
    ring = torch.zeros(2, 3, 2 * 1024)
    plan = SlicedConv(g, 2048, 2, 512)
    assert plan.four_step
    x = buffer[..., 1024:2048]
    run_passes(plan.passes(x, 1024, ring[..., 1024:2048]))
    expected = aliased_convolution(x.double().numpy(), g[0].double().numpy(), 2048)
    assert rel_err(ring[..., 1024:2048], expected[..., 1024:2048]) < 1e-5
    assert not ring[..., :1024].any()


def test_blocks_must_have_the_plans_batch_and_channels():
    plan = SlicedConv(torch.randn(1, 3, 16), 16, 2, 64)
    with pytest.raises(ValueError, match=r"blocks of shape \(1, 3, 8\) for a plan of"):
        plan.passes(torch.randn(1, 3, 8), 8, torch.zeros(1, 3, 8))
