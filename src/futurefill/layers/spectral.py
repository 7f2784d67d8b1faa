"""Spectral filters of the STU (Agarwal, Suo, Chen, Hazan, arXiv 2312.06837).

The Hankel matrix ``Z`` (L x L) has entries ``Z[i][j] = 2 / ((i+j)^3 - (i+j))`` for
``i, j = 1..L``. Its top-k eigenvectors ``phi_1..phi_k`` (eigenvalues ``sigma_1 >= ... >=
sigma_k``), scaled by ``sigma^(1/4)``, are the STU's fixed filters.

The eigenvalues decay exponentially (about 0.36, 2e-2, 3e-3, ... and below 1e-15 from about the
25th for L = 2048), so the top-k subspace is found in a couple of rounds of subspace iteration
with ``k + 16`` vectors, each round a Hankel matrix-vector product by FFT (O(k L log L)) and a QR
(O(k^2 L)). A dense eigendecomposition would cost O(L^3) time and O(L^2) memory (minutes and
8 GiB at L = 32768); this takes about a second there. Eigenvectors whose eigenvalue is at the
rounding floor (``sigma < 1e-16 sigma_1``) are not determined by Z to any precision; after
scaling they are filters of size ``sigma^(1/4) < 1e-4``. Signs are fixed (largest entry positive)
and the starting block is seeded, so the result is deterministic.
"""

from __future__ import annotations

import functools

import torch

from futurefill.fftconv import fft_size

__all__ = ["hankel_matrix", "spectral_filters", "top_eigenpairs"]

_OVERSAMPLE = 16  # extra vectors in the iterated block: speeds convergence of the k-th pair
_MAX_ROUNDS = 50
_TOL = 1e-13  # stop when every residual |Z v - sigma v| <= _TOL * sigma_1


def hankel_matrix(length: int) -> torch.Tensor:
    """The dense ``(length, length)`` float64 matrix ``Z[i][j] = 2 / ((i+j)^3 - (i+j))``.

    Indices run from 1, so ``Z[0, 0]`` (i = j = 1) is ``2 / (8 - 2) = 1/3``. For tests and small L.
    """
    i = torch.arange(1, length + 1, dtype=torch.float64)
    s = i[:, None] + i[None, :]
    return 2.0 / (s**3 - s)


def _hankel_matvec(length: int):
    """A function computing ``Z @ X`` for X ``(length, p)`` in O(p L log L), by FFT.

    ``(Z x)[i] = sum_j c[i + j] x[j]`` with ``c[n] = z(n + 2)`` (0-indexed): entries
    ``L-1 .. 2L-2`` of the linear convolution of ``c`` (length 2L - 1) with ``x`` reversed.
    """
    n = torch.arange(2, 2 * length + 1, dtype=torch.float64)
    coeffs = 2.0 / (n**3 - n)
    size = fft_size(3 * length - 2)
    spectrum = torch.fft.rfft(coeffs, n=size).unsqueeze(-1)  # (size // 2 + 1, 1)

    def matvec(x: torch.Tensor) -> torch.Tensor:
        full = torch.fft.irfft(torch.fft.rfft(x.flip(0), n=size, dim=0) * spectrum, n=size, dim=0)
        return full[length - 1 : 2 * length - 1]

    return matvec


@functools.lru_cache(maxsize=8)
def top_eigenpairs(length: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of the ``length x length`` STU Hankel matrix, in float64 on the CPU.

    Returns
    -------
    sigma : Tensor, shape (k,), descending.
    phi : Tensor, shape (length, k), orthonormal columns, each with its largest entry positive.

    Cached per (length, k): every STU layer of a model shares one computation. Treat the returned
    tensors as read-only.
    """
    if not 1 <= k <= length:
        raise ValueError(f"need 1 <= k <= length, got k={k}, length={length}")
    matvec = _hankel_matvec(length)
    width = min(length, k + _OVERSAMPLE)
    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(length, width, generator=gen, dtype=torch.float64)).Q
    for _ in range(_MAX_ROUNDS):
        zq = matvec(q)
        small = q.T @ zq  # Rayleigh-Ritz: Z restricted to span(q), (width, width)
        theta, s = torch.linalg.eigh((small + small.T) / 2)
        theta, s = theta.flip(0), s.flip(1)  # descending
        v, zv = q @ s, zq @ s
        residual = (zv[:, :k] - v[:, :k] * theta[:k]).norm(dim=0).max()
        if residual <= _TOL * theta[0]:
            break
        q = torch.linalg.qr(zv).Q
    sigma, phi = theta[:k].clone(), v[:, :k].clone()
    largest = phi.abs().argmax(dim=0)
    phi *= torch.sign(phi[largest, torch.arange(k)])
    return sigma, phi


def spectral_filters(length: int, k: int) -> torch.Tensor:
    """The STU filters ``phi_j * sigma_j^(1/4)``, shape ``(k, length)``, float64.

    Eigenvalues at the rounding floor may come out slightly negative; they are clamped to zero.
    """
    sigma, phi = top_eigenpairs(length, k)
    return (phi * sigma.clamp_min(0.0) ** 0.25).T.contiguous()
