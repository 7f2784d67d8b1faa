"""Short causal depthwise convolution, and the ring buffer that decodes it one token at a time.

``y[t] = bias + sum_{j=0..K-1} weight[:, j] * x[t - j]`` per channel (inputs before position 0
are zero), with a short kernel (K = 3 in Hyena). Decoding keeps the last ``K - 1`` inputs in a
ring buffer: input t lives in slot ``t mod (K - 1)``, so a step reads K - 1 slots and overwrites
the oldest; nothing is moved or allocated besides the output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ShortConv", "ShortConvCache"]


class ShortConvCache:
    """The last ``kernel_size - 1`` inputs of a :class:`ShortConv`, for ``batch_size`` sequences.

    Buffer ``inputs`` has shape ``(kernel_size - 1, batch_size, channels)``; slot ``t mod
    (kernel_size - 1)`` holds input t.
    """

    def __init__(
        self,
        kernel_size: int,
        batch_size: int,
        channels: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.inputs = torch.zeros(
            max(kernel_size - 1, 1), batch_size, channels, dtype=dtype, device=device
        )
        self.position = 0

    @property
    def nbytes(self) -> int:
        return self.inputs.numel() * self.inputs.element_size()

    def reset(self) -> None:
        """Back to an empty sequence (all past inputs zero)."""
        self.inputs.zero_()
        self.position = 0


class ShortConv(nn.Module):
    """Causal depthwise convolution with a short kernel.

    Parameters
    ----------
    channels : int
    kernel_size : int
        Taps per channel; ``weight[:, j]`` multiplies the input ``j`` steps back.
    """

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        bound = 1.0 / math.sqrt(kernel_size)  # nn.Conv1d's default for a depthwise kernel
        self.weight = nn.Parameter(torch.empty(channels, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, channels) -> (batch, length, channels)``."""
        xc = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))  # (batch, channels, K-1+length)
        kernel = self.weight.flip(-1).unsqueeze(1)  # (channels, 1, K): conv1d correlates
        return F.conv1d(xc, kernel, self.bias, groups=self.channels).transpose(1, 2)

    def setup_cache(self, batch_size: int) -> ShortConvCache:
        """A ring buffer on this layer's device and dtype."""
        return ShortConvCache(
            self.kernel_size,
            batch_size,
            self.channels,
            dtype=self.weight.dtype,
            device=self.weight.device,
        )

    def prefill(self, x: torch.Tensor, cache: ShortConvCache) -> torch.Tensor:
        """Outputs of a prompt ``(batch, P, channels)``; its last inputs go into the ring."""
        y = self.forward(x)
        prompt_len = x.shape[1]
        slots = max(self.kernel_size - 1, 1)
        for t in range(max(0, prompt_len - slots), prompt_len):
            cache.inputs[t % slots].copy_(x[:, t])
        cache.position = prompt_len
        return y

    def step(self, x_t: torch.Tensor, cache: ShortConvCache) -> torch.Tensor:
        """Output for one input per sequence: ``(batch, channels) -> (batch, channels)``."""
        t = cache.position
        slots = cache.inputs.shape[0]
        y = torch.addcmul(self.bias, self.weight[:, 0], x_t)
        for j in range(1, self.kernel_size):  # taps, not channels: K - 1 = 2 in Hyena
            y.addcmul_(self.weight[:, j], cache.inputs[(t - j) % slots])
        cache.inputs[t % slots].copy_(x_t)
        cache.position = t + 1
        return y
