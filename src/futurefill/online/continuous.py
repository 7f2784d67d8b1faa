"""Continuous-FutureFill (FutureFill paper, section 4): O(L log^2 L) time, O(L) memory.

Decoding keeps two time-major buffers of length K (the steps still to generate):
``x`` (the generated inputs) and ``c`` (for every future output, the part of it already known).
With local step i = 0, 1, ... and a tile length b0 (a power of two):

* step i: ``c[i : tile end] += h[0 : ...] * u_i`` (the input pushed directly into the rest of its
  tile), then ``y_i = c[i]``, final from now on;
* after a step that completes ``s`` inputs with ``s`` a multiple of b0, let ``b = s & -s``
  (the largest power of two dividing s): the block ``x[s-b : s]`` adds its contribution to outputs
  ``s .. s+b-1`` (a FutureFill with an FFT of length 2b).

Every pair (input s, output t > s) is covered once: inside a tile by the direct push, across tiles
by the block whose end has the largest 2-adic valuation between them. Level b runs K / 2b times at
cost O(b log b), so each level costs O(K log K) and there are log2(K / b0) of them.

After a prompt of length P, ``c`` starts as the prompt's contribution to the K = max_len - P
outputs after it (one FFT); the prompt itself is dropped, so memory is O(K), not O(P + K).
Filter spectra for every level (rfft of ``h[0 : 2b]`` at length 2b) are computed once.
"""

from __future__ import annotations

import torch

from futurefill.fftconv import prompt_conv
from futurefill.online.base import OnlineConvEngine


def default_tile_len(channels: int, batch_size: int, device: torch.device) -> int:
    """Tile length below which outputs are computed directly instead of by FFT."""
    return 64


class ContinuousConv(OnlineConvEngine):
    """Online causal convolution by Continuous-FutureFill. See :class:`OnlineConvEngine`.

    Parameters
    ----------
    tile_len : int, optional
        The direct-computation tile b0, a power of two; default :func:`default_tile_len`.
    """

    method = "continuous"

    def __init__(
        self,
        h: torch.Tensor,
        *,
        max_len: int | None = None,
        batch_size: int = 1,
        tile_len: int | None = None,
    ):
        super().__init__(h, max_len=max_len, batch_size=batch_size)
        if tile_len is None:
            tile_len = default_tile_len(self.channels, self.batch_size, self.device)
        tile_len = int(tile_len)
        if tile_len < 1 or tile_len & (tile_len - 1):
            raise ValueError(f"tile_len must be a positive power of two, got {tile_len}")
        self.tile_len = tile_len
        head = self._zeros(tile_len, 1, self.channels)
        width = min(tile_len, self.max_len)
        head[:width, 0].copy_(self.h[:, :width].t())
        self._h_head = head  # (b0, 1, D): what an input adds to the rest of its tile
        self._spectra: dict[int, torch.Tensor] = {}
        self._reset()

    def _allocate(self, remaining: int) -> None:
        """Buffers and level spectra for ``remaining`` more steps (the levels b < remaining)."""
        self._remaining = remaining
        self._offset = self.max_len - remaining  # global position of local step 0
        self._x = self._zeros(remaining, self.batch_size, self.channels)
        self._c = self._zeros(remaining, self.batch_size, self.channels)
        levels = []
        b = self.tile_len
        while b < remaining:
            levels.append(b)
            b *= 2
        self._spectra = {b: self._spectra.get(b, None) for b in levels}
        for b in levels:
            if self._spectra[b] is None:
                h_level = self.h[:, : min(2 * b, self.max_len)].t().unsqueeze(1)  # (<=2b, 1, D)
                self._spectra[b] = torch.fft.rfft(h_level, n=2 * b, dim=0)

    def _reset(self) -> None:
        self._allocate(self.max_len)

    def _buffers(self) -> list[torch.Tensor]:
        return [self._x, self._c, self._h_head, *self._spectra.values()]

    def _prefill(self, u: torch.Tensor) -> torch.Tensor:
        prompt_len = u.shape[-1]
        remaining = self.max_len - prompt_len
        y, future = prompt_conv(u, self.h[:, : self.max_len], remaining)
        self._allocate(remaining)
        self._c.copy_(future.permute(2, 0, 1))
        return y

    def _flush(self, seen: int) -> None:
        """Add block ``x[seen-b : seen]``'s contribution to outputs ``seen .. seen+b-1``."""
        b = seen & -seen
        n = 2 * b
        spec = torch.fft.rfft(self._x[seen - b : seen], n=n, dim=0).mul_(self._spectra[b])
        keep = min(b, self._remaining - seen)
        self._c[seen : seen + keep] += torch.fft.irfft(spec, n=n, dim=0)[b : b + keep]

    def _step(self, u_t: torch.Tensor) -> torch.Tensor:
        i = self._position - self._offset
        b0 = self.tile_len
        tile_end = min(i - i % b0 + b0, self._remaining)
        self._x[i].copy_(u_t)
        self._c[i:tile_end].addcmul_(self._h_head[: tile_end - i], u_t)
        self._position += 1
        if (i + 1) % b0 == 0 and i + 1 < self._remaining:
            self._flush(i + 1)
        return self._c[i]
