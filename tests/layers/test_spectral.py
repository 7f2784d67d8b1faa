"""STU spectral filters: the Hankel matrix as defined, its top eigenpairs, and their decay."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from futurefill.layers import hankel_matrix, spectral_filters, top_eigenpairs
from futurefill.layers.spectral import _hankel_matvec
from reference import rel_err


def test_hankel_entries_as_defined():
    z = hankel_matrix(5)
    assert z[0, 0] == 2 / (2**3 - 2)  # i = j = 1
    assert z[0, 1] == 2 / (3**3 - 3)
    for i in range(1, 6):
        for j in range(1, 6):
            s = i + j
            assert z[i - 1, j - 1] == pytest.approx(2 / (s**3 - s), rel=1e-15)
    assert torch.equal(z, z.T)


@pytest.mark.parametrize("length", [1, 2, 7, 64])
def test_fft_matvec_matches_dense(length):
    x = torch.randn(length, 3, dtype=torch.float64)
    dense = hankel_matrix(length) @ x
    # By FFT and by a dense product: equal to float64 rounding relative to the result's scale.
    assert rel_err(_hankel_matvec(length)(x), dense) < 1e-12


@pytest.mark.parametrize(("length", "k"), [(1, 1), (5, 5), (40, 8), (128, 24)])
def test_eigenpairs_orthonormal_and_exact(length, k):
    sigma, phi = top_eigenpairs(length, k)
    assert sigma.shape == (k,) and phi.shape == (length, k)
    eye = torch.eye(k, dtype=torch.float64)
    assert torch.allclose(phi.T @ phi, eye, rtol=0, atol=1e-12)
    z = hankel_matrix(length)
    residual = (z @ phi - phi * sigma).norm(dim=0)
    # top_eigenpairs stops at a residual <= 1e-13 sigma_1 measured with its FFT product; the
    # dense product here rounds differently, so a margin above that.
    assert residual.max() < 1e-12 * sigma[0]
    assert (sigma[:-1] >= sigma[1:]).all()
    # Signs are fixed: the largest entry of every eigenvector is positive.
    assert (phi[phi.abs().argmax(dim=0), torch.arange(k)] > 0).all()


@pytest.mark.parametrize(("length", "k"), [(12, 12), (96, 10)])
def test_eigenpairs_match_numpy_eigh(length, k):
    """Against LAPACK on the dense matrix, for the pairs above the rounding floor."""
    w, v = np.linalg.eigh(hankel_matrix(length).numpy())
    w, v = w[::-1][:k], v[:, ::-1][:, :k]
    sigma, phi = top_eigenpairs(length, k)
    # Eigenvalues are determined to about eps * ||Z|| = eps * sigma_1 (times a size factor).
    np.testing.assert_allclose(sigma.numpy(), w, rtol=0, atol=1e-12 * w[0])
    resolved = w > 1e-10 * w[0]  # eigenvectors well separated from the rest
    assert resolved.sum() >= min(k, 6)
    alignment = np.abs(np.sum(phi.numpy()[:, resolved] * v[:, resolved], axis=0))
    np.testing.assert_allclose(alignment, 1.0, atol=1e-9)


def test_eigenvalues_decay_geometrically():
    """sigma_j falls at least like exp(-pi^2 j / (4 log L)) (the STU paper's bound's rate)."""
    length, k = 256, 16
    sigma, _ = top_eigenpairs(length, k)
    rate = math.pi**2 / (4 * math.log(length))
    ratios = (sigma[1:] / sigma[:-1]).numpy()
    assert (ratios < math.exp(-rate)).all()
    assert sigma[0] == pytest.approx(0.3604, abs=1e-4)  # converged in L already at 256


def test_filters_are_scaled_eigenvectors_and_decay_in_time():
    length, k = 256, 8
    filters = spectral_filters(length, k)  # (k, L)
    sigma, phi = top_eigenpairs(length, k)
    assert filters.shape == (k, length)
    torch.testing.assert_close(filters, (phi * sigma**0.25).T, rtol=0, atol=0)
    norms = filters.norm(dim=1)  # = sigma^(1/4), decreasing
    torch.testing.assert_close(norms, sigma**0.25, rtol=1e-12, atol=0)
    assert (norms[1:] < norms[:-1]).all()
    # The Hankel entries fall as (i+j)^-3: the leading filters live at short lags, and so does
    # the energy of the whole bank; later filters (much smaller) spread further out.
    energy = filters.square()
    assert (energy[:3, : length // 4].sum(1) > 0.99 * energy[:3].sum(1)).all()
    bank = energy.sum(0)  # energy at each lag, over the 8 filters: decreasing
    assert (bank[1:] <= bank[:-1]).all()
    assert bank[length // 2 :].sum() < 5e-3 * bank.sum()


def test_result_is_deterministic_and_cached():
    a = top_eigenpairs(48, 6)
    assert top_eigenpairs(48, 6) is a
    top_eigenpairs.cache_clear()
    b = top_eigenpairs(48, 6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_k_must_fit():
    with pytest.raises(ValueError, match="1 <= k <= length"):
        top_eigenpairs(4, 5)
