"""Offline causal convolution by FFT, and the FutureFill primitive.

Conventions (0-indexed, ``h[0]`` multiplies the current input)::

    causal_conv(u, h)[..., t]   = sum_{s=0..t}   h[:, t - s] * u[..., s]
    futurefill(v, h, n)[..., j] = sum_{i=0..m-1} h[:, m + j - i] * v[..., i]     (m = len(v))

``futurefill`` is the contribution of a finished block of ``m`` inputs to the ``n`` outputs
that follow it (FutureFill paper, arXiv 2410.03766, section 2). Both are slices of one linear
convolution and cost O(N log N) with an FFT of length N.

Half-precision inputs (float16, bfloat16) are computed in float32 and returned in their own dtype.
"""

from __future__ import annotations

import torch

__all__ = ["bank_conv", "causal_conv", "compute_dtype", "fft_size", "futurefill", "prompt_conv"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in for tensors of ``dtype`` (half precisions widen to float32)."""
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"expected a floating dtype (float16, bfloat16, float32, float64), got {dtype}"
        )
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def fft_size(n: int) -> int:
    """Smallest power of two >= ``n`` (cuFFT and pocketfft are fastest there)."""
    return 1 << max(0, (n - 1).bit_length())


def _check_pair(u: torch.Tensor, h: torch.Tensor, name: str) -> None:
    if u.dim() != 3:
        raise ValueError(f"{name} must have shape (batch, channels, length), got {tuple(u.shape)}")
    if h.dim() != 2:
        raise ValueError(f"h must have shape (channels, filter_len), got {tuple(h.shape)}")
    if u.shape[1] != h.shape[0]:
        raise ValueError(f"{name} has {u.shape[1]} channels but h has {h.shape[0]}")
    if u.dtype != h.dtype:
        raise TypeError(f"{name} has dtype {u.dtype} but h has {h.dtype}")
    if u.device != h.device:
        raise ValueError(f"{name} is on {u.device} but h is on {h.device}")
    compute_dtype(h.dtype)


def _linear_conv_slice(u: torch.Tensor, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Entries ``start .. stop-1`` of the full linear convolution of ``u`` with ``h`` (last dim).

    A circular FFT of length N >= stop + (entries that would wrap) is used: wrap-around from
    indices >= N lands on indices < len(u) + len(h) - 1 - N, which must lie below ``start``.
    """
    m, k = u.shape[-1], h.shape[-1]
    n = fft_size(max(stop, m + k - 1 - start))
    dtype = compute_dtype(u.dtype)
    spec = torch.fft.rfft(u.to(dtype), n=n) * torch.fft.rfft(h.to(dtype), n=n)
    return torch.fft.irfft(spec, n=n)[..., start:stop].to(u.dtype)


def causal_conv(u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal convolution of every channel of ``u`` with its own filter, by FFT.

    Parameters
    ----------
    u : Tensor, shape (batch, channels, length)
    h : Tensor, shape (channels, filter_len), ``filter_len >= length``; same dtype and device.

    Returns
    -------
    y : Tensor, shape (batch, channels, length), ``y[..., t] = sum_{s<=t} h[:, t-s] u[..., s]``.

    Complexity O(length log length) per channel (one real FFT of size ``fft_size(2*length)``).

    Every output is computed from the spectrum of the whole input, so a NaN or an infinity
    anywhere in ``u`` turns every output NaN, earlier ones included, and a huge input adds its
    rounding error (about 1e-7 of its size in float32) to earlier outputs too. The online engines
    (:class:`futurefill.OnlineConv`) never look back: output t depends on inputs 0..t only.

    See Also
    --------
    futurefill : the contribution of a block of inputs to the outputs after it.
    bank_conv : every channel with every filter of a shared bank.
    futurefill.OnlineConv : the same outputs, one step at a time.
    """
    _check_pair(u, h, "u")
    length = u.shape[-1]
    if h.shape[-1] < length:
        raise ValueError(f"filter_len {h.shape[-1]} is shorter than the input length {length}")
    return _linear_conv_slice(u, h[:, :length], 0, length)


def bank_conv(u: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Causal convolution of every channel of ``u`` with every filter of a shared bank, by FFT.

    Parameters
    ----------
    u : Tensor, shape (batch, channels, length)
    bank : Tensor, shape (filters, filter_len), ``filter_len >= length``; same dtype and device.

    Returns
    -------
    Tensor, shape (batch, channels, filters, length): entry ``[b, c, f]`` is
    ``causal_conv`` of channel c with filter f. One FFT per channel and one per filter, not one
    per (channel, filter) pair: O((channels + filters) L log L + channels filters L).
    """
    if u.dim() != 3 or bank.dim() != 2:
        raise ValueError(
            f"need u (batch, channels, length) and bank (filters, filter_len), got "
            f"{tuple(u.shape)} and {tuple(bank.shape)}"
        )
    length = u.shape[-1]
    if bank.shape[-1] < length:
        raise ValueError(f"filter_len {bank.shape[-1]} is shorter than the input length {length}")
    n = fft_size(2 * length)
    dtype = compute_dtype(u.dtype)
    spec_u = torch.fft.rfft(u.to(dtype), n=n).unsqueeze(2)  # (batch, channels, 1, n//2+1)
    spec_h = torch.fft.rfft(bank[:, :length].to(dtype), n=n)  # (filters, n//2+1)
    return torch.fft.irfft(spec_u * spec_h, n=n)[..., :length].to(u.dtype)


def futurefill(v: torch.Tensor, h: torch.Tensor, n: int) -> torch.Tensor:
    """The FutureFill primitive: contribution of a block of inputs to the next ``n`` outputs.

    Parameters
    ----------
    v : Tensor, shape (batch, channels, m), the inputs ``u[a .. a+m-1]`` of a finished block.
    h : Tensor, shape (channels, filter_len), ``filter_len >= m + n``.
    n : int >= 0, how many future outputs to fill.

    Returns
    -------
    Tensor, shape (batch, channels, n): entry ``j`` is ``sum_i h[:, m+j-i] v[..., i]``, the block's
    share of output ``y[a+m+j]``. Equal to ``np.convolve(v, h[:m+n])[m : m+n]`` per channel.

    Complexity O((m+n) log(m+n)): one circular FFT of length ``fft_size(m+n)`` (aliasing lands
    only on indices below ``m - 1``, which are not kept).
    """
    _check_pair(v, h, "v")
    m = v.shape[-1]
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if h.shape[-1] < m + n:
        raise ValueError(f"filter_len {h.shape[-1]} is shorter than m + n = {m + n}")
    return _linear_conv_slice(v, h[:, : m + n], m, m + n)


def prompt_conv(u: torch.Tensor, h: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of a prompt and its contribution to the ``n`` outputs after it, from one FFT.

    Parameters
    ----------
    u : Tensor, shape (batch, channels, P), the prompt.
    h : Tensor, shape (channels, filter_len), ``filter_len >= P + n``.
    n : int >= 0.

    Returns
    -------
    y : Tensor, shape (batch, channels, P), equal to ``causal_conv(u, h)``.
    future : Tensor, shape (batch, channels, n), equal to ``futurefill(u, h, n)``: what the prompt
        adds to outputs ``P .. P+n-1``. This is all a decoder needs to keep of the prompt.

    Complexity O((P+n) log(P+n)). Entries ``0 .. P+n-1`` of the linear convolution of ``u`` with
    ``h[:, :P+n]`` need one FFT of length ``fft_size(2P + n - 1)`` to be free of aliasing. When
    ``n < P`` that is often twice ``N = fft_size(max(2P - 1, P + n))``, so the two parts are
    computed at length N instead, sharing the prompt's spectrum: the outputs from ``h[:, :P]``
    (linear length 2P - 1 <= N, no aliasing) and the future from ``h[:, :P+n]`` (aliasing lands
    below index 2P + n - 1 - N <= P - 1, outside the kept slice). (Measurements:
    docs/results/cpu-2core/tuning.md.)
    """
    _check_pair(u, h, "u")
    prompt_len = u.shape[-1]
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if h.shape[-1] < prompt_len + n:
        raise ValueError(f"filter_len {h.shape[-1]} is shorter than P + n = {prompt_len + n}")
    split_len = fft_size(max(2 * prompt_len - 1, prompt_len + n))
    if split_len >= fft_size(2 * prompt_len + n - 1):
        full = _linear_conv_slice(u, h[:, : prompt_len + n], 0, prompt_len + n)
        return full[..., :prompt_len], full[..., prompt_len:]
    dtype = compute_dtype(u.dtype)
    spec_u = torch.fft.rfft(u.to(dtype), n=split_len)
    h = h.to(dtype)
    outputs = spec_u * torch.fft.rfft(h[:, :prompt_len], n=split_len)
    future = spec_u * torch.fft.rfft(h[:, : prompt_len + n], n=split_len)
    y = torch.fft.irfft(outputs, n=split_len)[..., :prompt_len]
    future = torch.fft.irfft(future, n=split_len)[..., prompt_len : prompt_len + n]
    return y.to(u.dtype), future.to(u.dtype)
