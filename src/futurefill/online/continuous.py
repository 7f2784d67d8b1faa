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

from abc import abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch

from futurefill.checks import check_int
from futurefill.fftconv import prompt_conv
from futurefill.online.base import OnlineConvEngine, ScheduledWork, traced_push


def check_tile_len(tile_len: object) -> int:
    """``tile_len`` as an int, or an error unless it is a positive power of two."""
    tile_len = check_int(tile_len, "tile_len", None)
    if tile_len < 1 or tile_len & (tile_len - 1):
        raise ValueError(f"tile_len must be a positive power of two, got {tile_len}")
    return tile_len


def default_tile_len(channels: int, batch_size: int, device: torch.device) -> int:
    """Tile length b0 below which outputs are computed directly instead of by FFT.

    A step costs a few dispatched ops whatever b0 is, until the push of ``b0 * batch * channels``
    products stops being negligible; each FFT level costs a fixed overhead per call, and there are
    ``K / b0`` calls in all. On CPU the choice matters little once b0 >= 32
    (docs/results/cpu-2core/tuning.md): 64 for small steps, 128 for wider ones. On CUDA every op
    costs a kernel launch while a push of a few hundred rows costs about the same as one row, so
    tiles are larger there.
    """
    if torch.device(device).type == "cuda":
        return 256
    return 64 if channels * batch_size <= 512 else 128


class TiledEngine(OnlineConvEngine):
    """What Continuous- and Deamortized-FutureFill share: tiles of b0 inputs whose outputs get the
    direct part, each input pushed into a time-major window of outputs (the rest of its tile, and
    for the deamortized schedule the whole next tile too), and a hook at every tile's end.

    Parameters
    ----------
    tile_len : int, optional
        The direct-computation tile b0, a power of two; default :func:`default_tile_len`.
    """

    options: ClassVar[dict[str, Callable[[object], int]]] = {"tile_len": check_tile_len}
    #: Tiles of outputs an input is pushed into (1: its own; 2: its own and the next).
    window_tiles: ClassVar[int] = 1

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
        self.tile_len = tile_len = check_tile_len(tile_len)
        taps = self.window_tiles * tile_len
        head = self._zeros(taps, 1, self.channels)
        width = min(taps, self.max_len)
        head[:width, 0].copy_(self.h[:, :width].t())
        self._h_head = head  # (taps, 1, D): what an input adds to the outputs of its window
        self._setup()
        self._reset()

    def _setup(self) -> None:
        """The subclass's own state, before the first ``_reset``."""

    def _tile_views(self, window: torch.Tensor) -> None:
        """The current tile's inputs, and the views every step uses into them and into
        ``window`` (time-major outputs, starting at the current tile), built once."""
        b0 = self.tile_len
        self._window = window
        self._x_tile = self._zeros(b0, self.batch_size, self.channels)
        self._x_rows = list(self._x_tile.unbind(0))
        self._out_rows = list(window[:b0].unbind(0))
        self._out_rests = [window[j:] for j in range(b0)]  # outputs j .. end of the window
        self._h_rests = [self._h_head[: len(window) - j] for j in range(b0)]

    def _step(self, u_t: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        j = self._traced_index()
        self._x_rows[j].copy_(u_t)
        self._out_rests[j].addcmul_(self._h_rests[j], u_t)
        return self._out_rows[j].clone() if out is None else out.copy_(self._out_rows[j])

    def _traced_index(self) -> int:
        return (self._position - self._offset) % self.tile_len

    def _scheduled_work(self) -> ScheduledWork | None:
        seen = self._position - self._offset
        return None if seen % self.tile_len else self._tile_end(seen)

    @abstractmethod
    def _tile_end(self, seen: int) -> ScheduledWork:
        """The work after the step that completed ``seen`` local inputs, a multiple of the
        tile."""

    def step_traced(self, u_t: torch.Tensor) -> torch.Tensor:
        """The tile step as a fixed-shape function of the index tensor: the input goes to row j
        of the tile, and ``h[t - j] u`` to every output t >= j of the window (the filter
        gathered by lag, zero for t < j: :func:`~futurefill.online.base.traced_push`)."""
        return traced_push(self._x_tile, self._window, self._h_head, u_t, self._index)


class ContinuousConv(TiledEngine):
    """Online causal convolution by Continuous-FutureFill. See :class:`OnlineConvEngine`.

    Parameters
    ----------
    tile_len : int, optional
        The direct-computation tile b0, a power of two; default :func:`default_tile_len`.
    """

    method = "continuous"
    summary = (
        "O(L log^2 L) time, O(K) memory: tiles of b0 steps computed directly, FFT levels at "
        "their ends (tile_len b0, a power of two)"
    )

    def _setup(self) -> None:
        self._spectra: dict[int, torch.Tensor] = {}

    def _allocate(self, remaining: int) -> None:
        """Buffers and level spectra for ``remaining`` more steps (the levels b < remaining)."""
        b0, batch, channels = self.tile_len, self.batch_size, self.channels
        padded = -(-remaining // b0) * b0  # whole tiles
        self._remaining = remaining
        self._offset = self.max_len - remaining  # global position of local step 0
        # Long buffers are channel-major: the FFTs of the levels run along their last dimension.
        self._x = self._zeros(batch, channels, padded)  # generated inputs
        self._c = self._zeros(batch, channels, padded)  # known part of every future output
        # The current tile's outputs, time-major; the step's views into it built once.
        self._c_tile = self._zeros(b0, batch, channels)
        self._tile_views(self._c_tile)
        levels = []
        b = b0
        while b < remaining:
            levels.append(b)
            b *= 2
        self._spectra = {b: self._spectra.get(b, None) for b in levels}
        for b in levels:
            if self._spectra[b] is None:
                h_level = self.h[:, : min(2 * b, self.max_len)]  # (D, <=2b)
                self._spectra[b] = torch.fft.rfft(h_level, n=2 * b)

    def _reset(self) -> None:
        self._allocate(self.max_len)

    def _buffers(self) -> list[torch.Tensor]:
        buffers = [self._x, self._c, self._x_tile, self._c_tile, self._h_head]
        return [*buffers, *self._spectra.values()]

    def _prefill(self, u: torch.Tensor) -> torch.Tensor:
        prompt_len = u.shape[-1]
        remaining = self.max_len - prompt_len
        y, future = prompt_conv(u, self.h[:, : self.max_len], remaining)
        self._allocate(remaining)
        self._c[..., :remaining].copy_(future)
        if remaining:
            self._c_tile.copy_(self._c[..., : self.tile_len].permute(2, 0, 1))
        return y

    def _extend(self, u: torch.Tensor) -> torch.Tensor | None:
        """Right after a prefill (or an extension: no input generated since), the chunk is one
        more piece of the prompt: its outputs are the known part ``c`` plus its own convolution,
        and its contribution to the outputs after it joins ``c`` (one FFT)."""
        if self._position != self._offset:
            return None
        n, remaining = u.shape[-1], self._remaining
        known = self._c[..., :remaining].clone()  # every earlier input's part of what follows
        y, future = prompt_conv(u, self.h[:, : self.max_len], remaining - n)
        self._allocate(remaining - n)
        self._c[..., : remaining - n].copy_(known[..., n:] + future)
        if remaining > n:
            self._c_tile.copy_(self._c[..., : self.tile_len].permute(2, 0, 1))
        return y + known[..., :n]

    def _tile_end(self, seen: int) -> TileEnd:
        return TileEnd(self, seen)


class TileEnd(ScheduledWork):
    """A continuous engine's tile end after ``seen`` local inputs: file the tile, then the
    FutureFill level: the block ``x[seen-b : seen]`` (b the largest power of two dividing
    ``seen``) adds its contribution to outputs ``seen .. seen+b-1`` by an FFT of length 2b.
    Tile ends whose levels have the same size (and engines the same shape) run as one FFT call,
    whatever their positions: the layers of a model, and the rows of a batch at their own
    positions that end a block of that size at this step."""

    def __init__(self, engine: ContinuousConv, seen: int):
        self.engine, self.seen = engine, seen
        self.level = seen & -seen if seen < engine._remaining else 0  # 0: the last tile
        shape = (engine.batch_size, engine.channels, engine.tile_len)
        self.key = (self.level, shape, engine.compute_dtype, engine.device)

    def run(self) -> None:
        self.run_batch([self])

    @classmethod
    def run_batch(cls, works: list[TileEnd]) -> None:
        for work in works:
            engine, seen, b0 = work.engine, work.seen, work.engine.tile_len
            engine._x[..., seen - b0 : seen].copy_(engine._x_tile.permute(1, 2, 0))
        b = works[0].level
        if not b:
            return  # the last tile: no output after it
        if len(works) == 1:  # views, no stacking copies
            work = works[0]
            blocks = work.engine._x[None, ..., work.seen - b : work.seen]
            spectra = work.engine._spectra[b][None]
        else:
            blocks = torch.stack([w.engine._x[..., w.seen - b : w.seen] for w in works])
            spectra = torch.stack([w.engine._spectra[b] for w in works])
        spec = torch.fft.rfft(blocks, n=2 * b).mul_(spectra.unsqueeze(1))  # (E, B, D, b + 1)
        future = torch.fft.irfft(spec, n=2 * b)
        for work, y in zip(works, future, strict=True):
            engine, seen = work.engine, work.seen
            keep = min(b, engine._c.shape[-1] - seen)
            engine._c[..., seen : seen + keep] += y[..., b : b + keep]
            engine._c_tile.copy_(engine._c[..., seen : seen + engine.tile_len].permute(2, 0, 1))
