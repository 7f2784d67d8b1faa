"""STU, full form and tensordot approximation, against the equations in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from futurefill.fftconv import bank_conv
from futurefill.layers import STU, spectral_filters
from reference import rel_err

D, L, K = 4, 24, 5


def lagged_sum(x: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Plain loop: out[b, t, d] = sum_{i <= t} f[i] x[b, t - i, d]."""
    out = np.zeros_like(x)
    for t in range(x.shape[1]):
        for i in range(t + 1):
            out[:, t] += f[i] * x[:, t - i]
    return out


def features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """U+ and U- of the STU paper, each (B, T, D, K)."""
    phi = spectral_filters(L, K).numpy()
    signs = (-1.0) ** np.arange(L)
    plus = np.stack([lagged_sum(x, phi[j]) for j in range(K)], axis=-1)
    minus = np.stack([lagged_sum(x, signs * phi[j]) for j in range(K)], axis=-1)
    return plus, minus


@pytest.fixture
def x():
    return torch.randn(2, 13, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_buffer_holds_the_filters_and_their_alternating_versions():
    layer = STU(D, L, K).double()
    phi = spectral_filters(L, K)
    assert layer.filters.shape == (2 * K, L)
    assert torch.equal(layer.filters[:K], phi)
    assert torch.equal(layer.filters[K:], phi * (-1.0) ** torch.arange(L))
    assert not layer.filters.requires_grad


def test_full_form_matches_the_equations(x):
    torch.manual_seed(0)
    layer = STU(D, L, K, tensordot=False).double()
    with torch.no_grad():
        y = layer(x)
    plus, minus = features(x.numpy())
    m = layer.m.detach().numpy()  # (d_in, 2k, d_out)
    m_plus, m_minus = m[:, :K], m[:, K:]
    ref = np.einsum("btdj,dje->bte", plus, m_plus) + np.einsum("btdj,dje->bte", minus, m_minus)
    assert rel_err(y, ref) < 1e-12


def test_tensordot_form_matches_the_equations(x):
    torch.manual_seed(0)
    layer = STU(D, L, K, tensordot=True).double()
    with torch.no_grad():
        y = layer(x)
    projected = x.numpy() @ layer.m_in.detach().numpy()
    plus, minus = features(projected)  # per channel d, every filter j
    m_f = layer.m_filters.detach().numpy()  # (2k, d)
    ref = np.einsum("btdj,jd->btd", plus, m_f[:K]) + np.einsum("btdj,jd->btd", minus, m_f[K:])
    assert rel_err(y, ref) < 1e-12


def test_minus_branch_is_the_alternating_input_branch_times_the_parity(x):
    """Our U-_t = sum_i (-1)^i phi[i] u[t-i] = (-1)^t (phi * ((-1)^s u_s))_t."""
    phi = spectral_filters(L, K).numpy()
    u = x.numpy()
    signs = (-1.0) ** np.arange(u.shape[1])
    _, minus = features(u)
    for j in range(K):
        other = lagged_sum(u * signs[:, None], phi[j]) * signs[:, None]
        np.testing.assert_allclose(minus[..., j], other, rtol=0, atol=1e-14)


def test_bank_conv_matches_loop(x):
    bank = torch.randn(3, L, dtype=torch.float64)
    out = bank_conv(x.transpose(1, 2), bank)  # (B, D, 3, T)
    for j in range(3):
        ref = lagged_sum(x.numpy(), bank[j].numpy())  # (B, T, D)
        assert rel_err(out[:, :, j].transpose(1, 2), ref) < 1e-12


def test_num_eigh_must_fit():
    with pytest.raises(ValueError, match="num_eigh must be in"):
        STU(D, 4, 5)
