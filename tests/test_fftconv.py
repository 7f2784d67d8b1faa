import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from futurefill import causal_conv, futurefill, prompt_conv
from reference import decaying_filter, random_input, reference_conv, rel_err

LENGTHS = [1, 2, 3, 7, 64, 100, 257]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize(("batch", "channels"), [(1, 1), (3, 5)])
def test_causal_conv_matches_numpy(length, batch, channels):
    h = decaying_filter(channels, length + 5)
    u = random_input(batch, channels, length)
    assert rel_err(causal_conv(u, h), reference_conv(u, h)) < 1e-12


def test_causal_conv_float32_and_half():
    h = decaying_filter(4, 300)
    u = random_input(2, 4, 300)
    ref = reference_conv(u, h)
    assert causal_conv(u.float(), h.float()).dtype == torch.float32
    assert rel_err(causal_conv(u.float(), h.float()), ref) < 1e-5
    for half in (torch.float16, torch.bfloat16):
        y = causal_conv(u.to(half), h.to(half))
        assert y.dtype == half
        ref_half = reference_conv(u.to(half).double(), h.to(half).double())
        assert rel_err(y.double(), ref_half) < 1e-2


@given(
    m=st.integers(1, 80),
    n=st.integers(0, 80),
    extra=st.integers(0, 5),
    channels=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_futurefill_is_a_slice_of_the_full_convolution(m, n, extra, channels, seed):
    h = decaying_filter(channels, m + n + extra, seed=seed)
    v = random_input(2, channels, m, seed=seed + 1)
    got = futurefill(v, h, n)
    assert got.shape == (2, channels, n)
    expected = np.zeros((2, channels, n))
    for b in range(2):
        for d in range(channels):
            expected[b, d] = np.convolve(v[b, d].numpy(), h[d, : m + n].numpy())[m : m + n]
    assert rel_err(got, expected) < 1e-12  # relative to the outputs' scale, not absolute


@given(p=st.integers(1, 90), n=st.integers(0, 60), seed=st.integers(0, 1000))
def test_prompt_conv_outputs_and_future(p, n, seed):
    h = decaying_filter(3, p + n, seed=seed)
    u = random_input(2, 3, p, seed=seed + 7)
    y, future = prompt_conv(u, h, n)
    padded = torch.cat([u, torch.zeros(2, 3, n, dtype=u.dtype)], -1)
    ref = reference_conv(padded, h)
    assert rel_err(y, ref[..., :p]) < 1e-12
    if n:
        assert rel_err(future, ref[..., p:]) < 1e-12
        assert rel_err(future, futurefill(u, h, n)) < 1e-12


@pytest.mark.parametrize(
    ("p", "n"), [(1, 0), (1, 1), (7, 1), (60, 10), (64, 1), (65, 63), (257, 7), (7, 257)]
)
def test_prompt_conv_both_fft_lengths(p, n):
    """Short futures take two half-length products, long ones one full product: both exact."""
    h = decaying_filter(4, p + n + 5)
    u = random_input(3, 4, p)
    y, future = prompt_conv(u, h, n)
    ref = reference_conv(torch.cat([u, torch.zeros(3, 4, n, dtype=u.dtype)], -1), h)
    assert y.shape == (3, 4, p) and future.shape == (3, 4, n)
    assert rel_err(y, ref[..., :p]) < 1e-12
    if n:
        assert rel_err(future, ref[..., p:]) < 1e-12
    y32, future32 = prompt_conv(u.float(), h.float(), n)
    assert y32.dtype == future32.dtype == torch.float32
    assert rel_err(torch.cat([y32, future32], -1), ref) < 1e-5


def test_offline_bad_inputs():
    h = decaying_filter(3, 10)
    with pytest.raises(ValueError, match="shorter than the input length"):
        causal_conv(random_input(1, 3, 11), h)
    with pytest.raises(ValueError, match=r"\(batch, channels, length\)"):
        causal_conv(torch.zeros(3, 10, dtype=torch.float64), h)
    with pytest.raises(ValueError, match="channels"):
        causal_conv(random_input(1, 2, 5), h)
    with pytest.raises(TypeError, match="dtype"):
        causal_conv(random_input(1, 3, 5).float(), h)
    with pytest.raises(TypeError, match="floating dtype"):
        causal_conv(torch.zeros(1, 3, 5, dtype=torch.int64), h.long())
    with pytest.raises(ValueError, match="m \\+ n"):
        futurefill(random_input(1, 3, 6), h, 5)
    with pytest.raises(ValueError, match="n must be >= 0"):
        futurefill(random_input(1, 3, 6), h, -1)
