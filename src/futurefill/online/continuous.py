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

Rows at independent positions (continuous batching) have an engine of their own,
:class:`ContinuousRows`: one state for a whole batch whose rows start, step and restart on their
own, each on the schedule above from its own position 0:

* the current tiles are buffers ``(B, b0, D)``, every row at its own place ``j_r`` in its tile
  (an index tensor ``(B,)``): a step of any set of rows is a handful of batched tensor
  operations (the input to place ``j_r`` of its tile, ``h[t - j_r] u_r`` to every later place
  ``t``, from a table of the b0 shifted filter heads), the same for 1 row or B;
* tile ends of different rows (and of different layers) with levels of one size run as one FFT
  call (:class:`RowTileEnd`), whatever their positions;
* a prompt, or any chunk of it (:meth:`ContinuousRows.extend`), runs the levels of the tile ends
  it completes (one FFT call per level size) and the direct part of all its tiles (one batched
  FFT of length 2 b0), so a chunk of ``n`` inputs costs O(n log^2 n) and its FFTs cover only the
  blocks it completes, never the row's remaining length (chunked prefill at the chunk's cost).

Its memory: ``x`` and ``c`` of ``max_len`` per row (a row must be able to hold any sequence), the
two tiles, and the level spectra once for all rows.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from futurefill.checks import check_int
from futurefill.fftconv import compute_dtype, prompt_conv
from futurefill.online.base import (
    OnlineConvEngine,
    ScheduledWork,
    block_futures,
    check_filter,
    check_traced_dtype,
    run_scheduled,
    tensor_bytes,
    traced_push,
)
from futurefill.online.rows import RowsEngine, TracedWork


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


def default_rows_tile_len(device: torch.device) -> int:
    """The tile b0 of :class:`ContinuousRows`: its step gathers one of b0 shifted filter heads
    per row, ``(rows, b0, channels)``, from a table of ``b0 * b0 * channels`` taps, so its tiles
    are smaller than a lockstep engine's. On CPU 16 and 32 step fastest for the bundled model's
    16 rows (docs/results/cpu-2core/tuning.md); on CUDA a launch costs more than the push."""
    return 64 if torch.device(device).type == "cuda" else 32


class ContinuousRows(RowsEngine):
    """Online causal convolution of ``batch_size`` rows, each at its own position, by
    Continuous-FutureFill (see the module docstring): the rows form of the method
    (:class:`~futurefill.online.rows.RowsEngine`, whose methods take the rows' positions). Its
    compiled step runs wholly in graphs (:meth:`traced_work`).

    Parameters
    ----------
    h : Tensor, shape (channels, filter_len)
        One causal filter per channel, shared by every row; computed in h's dtype (float16 and
        bfloat16 in float32).
    max_len : int, optional
        Longest sequence of a row; default and maximum ``filter_len``.
    batch_size : int
        Rows.
    tile_len : int, optional
        The direct-computation tile b0, a power of two; default :func:`default_rows_tile_len`.

    Examples
    --------
    >>> from futurefill.fftconv import causal_conv
    >>> h, u = torch.randn(2, 16, dtype=torch.float64), torch.randn(2, 9, dtype=torch.float64)
    >>> engine = ContinuousRows(h, batch_size=3, tile_len=2)
    >>> y_prompt = engine.extend(u[None, :, :5], [1], start=0)  # row 1: a prompt of 5
    >>> y_a, work = engine.step(u[None, :, 0], [2], [0])         # row 2 starts by stepping
    >>> y_b, work = engine.step(torch.stack([u[:, 5], u[:, 1]]), [1, 2], [5, 1])  # both on
    >>> expected = causal_conv(u[None, :, :6], h)[0]
    >>> bool(torch.allclose(torch.cat([y_prompt[0], y_b[:1].t()], 1), expected))
    True
    """

    schedules_in_graph = True

    def __init__(
        self,
        h: torch.Tensor,
        *,
        max_len: int | None = None,
        batch_size: int = 1,
        tile_len: int | None = None,
    ):
        max_len, batch_size = check_filter(h, max_len, batch_size)
        channels = h.shape[0]
        self.batch_size = batch_size
        self.dtype, self.compute_dtype = h.dtype, compute_dtype(h.dtype)
        self.device, self.channels, self.max_len = h.device, channels, max_len
        if tile_len is None:
            tile_len = default_rows_tile_len(h.device)
        self.tile_len = b0 = check_tile_len(tile_len)
        # Ordinary tensors, updated in place in and out of inference mode (resets come outside).
        with torch.inference_mode(False):
            h = h.detach().to(self.compute_dtype)[:, :max_len]
            length = -(-max_len // b0) * b0  # whole tiles
            self._x = self._zeros(batch_size, channels, length)  # every row's inputs
            self._c = self._zeros(batch_size, channels, length)  # known part of its outputs
            self._x_tile = self._zeros(batch_size, b0, channels)  # every row's current tile
            self._c_tile = self._zeros(batch_size, b0, channels)
            # What an input at place j adds to the tile: pushes[j, t] = h[t - j] (0 for t < j).
            self._pushes = self._zeros(b0, b0, channels)
            for j in range(min(b0, max_len)):
                width = min(b0 - j, max_len)
                self._pushes[j, j : j + width].copy_(h[:, :width].t())
            # The direct part of a piece of a tile (at most b0 inputs, lags below b0), by FFT.
            self._tile_spectrum = torch.fft.rfft(h[:, :b0], n=2 * b0)
            self._spectra = {}  # level b -> rfft of h[:, :2b] at length 2b
            b = b0
            while b < max_len:
                self._spectra[b] = torch.fft.rfft(h[:, : 2 * b], n=2 * b)
                b *= 2
            # Each row's place in its tile, j_r = position % b0: what a traced step reads (set by
            # prepare_traced and advance; eager calls take the places from their positions).
            self._index = torch.zeros(batch_size, dtype=torch.long, device=self.device)
            self._all_rows = torch.arange(batch_size, device=self.device)
        self._every_row = tuple(range(batch_size))
        # For a step of every row at one place j: the tiles' column j, the outputs from j on,
        # the pushes of place j and the output at j (views: the buffers are updated in place).
        self._lockstep_views = [
            (self._x_tile[:, j], self._c_tile[:, j:], self._pushes[j, j:], self._c_tile[:, j])
            for j in range(b0)
        ]

    @property
    def nbytes(self) -> int:
        """Bytes of the engine's buffers (every row's and the shared spectra)."""
        tensors = [self._x, self._c, self._x_tile, self._c_tile, self._pushes, self._index]
        return tensor_bytes([*tensors, self._tile_spectrum, *self._spectra.values()])

    def reset_rows(self, rows: Sequence[int], positions: Sequence[int]) -> None:
        """Those rows back to position 0 (empty sequences), the others untouched."""
        index = self._row_tensor(rows)
        for row, position in zip(rows, positions, strict=True):
            self._c[row, :, : 2 * position].zero_()  # a row's levels wrote below 2 p at most
        self._c_tile.index_fill_(0, index, 0)

    def save_rows(self, rows: Sequence[int], position: int) -> list[torch.Tensor]:
        """The rows' inputs so far, the known part of their outputs (nonzero below ``2
        position`` only) and their tiles: O(position) per row."""
        index = self._row_tensor(rows)
        known = min(2 * position, self._c.shape[-1])
        with torch.inference_mode(False):
            return [
                self._x[index, :, :position],
                self._c[index, :, :known],
                self._x_tile[index],
                self._c_tile[index],
            ]

    def load_rows(self, rows: Sequence[int], position: int, saved: list[torch.Tensor]) -> None:
        """(A reset row's ``c`` is zero: :meth:`save_rows` leaves out only zeros.)"""
        index = self._row_tensor(rows)
        x, c, x_tile, c_tile = saved
        self._x[index, :, :position] = x
        self._c[index, :, : c.shape[-1]] = c
        self._x_tile[index] = x_tile
        self._c_tile[index] = c_tile

    def step(
        self, u: torch.Tensor, rows: Sequence[int], positions: Sequence[int]
    ) -> tuple[torch.Tensor, list[RowTileEnd]]:
        """One input per row of ``rows`` (at ``positions``): ``u`` ``(len(rows), channels)``;
        returns those rows' outputs ``(len(rows), channels)`` and the tile ends the step
        completes (to run before those rows' next input)."""
        self._check(u, rows, 2)
        if max(positions) >= self.max_len:
            raise RuntimeError(f"a row is at max_len={self.max_len}: reset it first")
        u, b0 = u.to(self.compute_dtype), self.tile_len
        first = positions[0]
        if tuple(rows) == self._every_row and all(p == first for p in positions):
            # Every row at one place j of its tile (a lockstep batch): views made once.
            x_column, c_rest, push_rest, c_column = self._lockstep_views[first % b0]
            x_column.copy_(u)
            c_rest.addcmul_(push_rest, u.unsqueeze(1))
            y = c_column.to(self.dtype, copy=True)
            return y, self._tile_ends(rows, positions)
        j = torch.tensor([p % b0 for p in positions], device=self.device)
        y = self._push(u, self._row_tensor(rows), j).to(self.dtype)
        return y, self._tile_ends(rows, positions)

    def step_traced(self, u: torch.Tensor) -> torch.Tensor:
        """Every row one step (its place in its tile from the index tensor), the index then one
        place on for every row: a row that did not step is free, and its place is set again
        (:meth:`prepare_traced`) before it is used."""
        y = self._push(u, self._all_rows, self._index)
        torch.remainder(self._index + 1, self.tile_len, out=self._index)
        return y

    def traced_work(self, rows: Sequence[int], positions: Sequence[int]) -> list[TracedWork]:
        """After :meth:`step_traced` of ``rows`` (at ``positions`` before it): the tiles they end,
        as tensor operations (:func:`run_row_tile_ends`), one work per level size that ends
        (none at most steps). A work's pattern is the tile, the level and how many rows end a
        block of it (``(b0, level, count)``, level 0: a full row's last tile, filed only): for
        rows in lockstep about log2(max_len / b0) + 1 patterns; rows at their own positions
        meet a few counts of each. Its args: the rows, then their inputs seen."""
        b0, ends = self.tile_len, {}
        for row, position in zip(rows, positions, strict=True):
            seen = position + 1
            if seen % b0 == 0:
                level = seen & -seen if seen < self.max_len else 0
                ends.setdefault(level, []).append((row, seen))
        group = (self.channels, self.batch_size, self.compute_dtype, self.device)
        buffers = (self._x, self._c, self._x_tile, self._c_tile)
        return [
            TracedWork(
                run_row_tile_ends,
                group,
                (b0, level, len(ended)),
                (*(row for row, _ in ended), *(seen for _, seen in ended)),
                (*buffers, self._spectra[level]) if level else buffers,
            )
            for level, ended in sorted(ends.items(), reverse=True)
        ]

    def _tile_ends(self, rows: Sequence[int], positions: Sequence[int]) -> list[RowTileEnd]:
        """The tile ends of a step of ``rows`` at ``positions``."""
        b0 = self.tile_len
        return [
            RowTileEnd(self, row, p + 1)
            for row, p in zip(rows, positions, strict=True)
            if (p + 1) % b0 == 0
        ]

    def extend(self, u: torch.Tensor, rows: Sequence[int], start: int) -> torch.Tensor:
        """The next ``n`` inputs of ``rows``, all at position ``start``: ``u`` ``(len(rows),
        channels, n)``; returns their outputs, same shape, the rows left as if stepped through
        the chunk. O(n log^2 n): the FFTs cover the blocks the chunk completes, never the rows'
        remaining length. A chunk that starts inside a tile first finishes that tile (its direct
        part by one FFT of length 2 b0, then the tile's end); the rest is
        :meth:`_extend_tiles`."""
        self._check(u, rows, 3)
        n, b0 = u.shape[-1], self.tile_len
        if start + n > self.max_len:
            raise RuntimeError(f"no room for {n} more inputs before max_len={self.max_len}")
        index = self._row_tensor(rows)
        u = u.to(self.compute_dtype)
        outputs = []
        j = start % b0  # place in the current tile
        if j:
            m = min(b0 - j, n)
            piece = u[..., :m]  # (R, D, m)
            direct = torch.fft.irfft(
                torch.fft.rfft(piece, n=2 * b0) * self._tile_spectrum, n=2 * b0
            )[..., : b0 - j]  # the piece's part of outputs j .. end of its tile
            self._x_tile[index, j : j + m] = piece.transpose(1, 2)
            self._c_tile[index, j:] += direct.transpose(1, 2)
            outputs.append(self._c_tile[index, j : j + m].transpose(1, 2))
            if j + m == b0:
                RowTileEnd.run_batch([RowTileEnd(self, row, start + m) for row in rows])
            u, start = u[..., m:], start + m
        if u.shape[-1]:
            outputs.append(self._extend_tiles(u, index, rows, start))
        y = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        return y.to(self.dtype)

    def _extend_tiles(
        self, u: torch.Tensor, index: torch.Tensor, rows: Sequence[int], start: int
    ) -> torch.Tensor:
        """A chunk ``u`` ``(R, D, n)`` from ``start``, a tile's first place. Stepping it would run
        the tile ends ``e`` of the chunk in order, but a level only reads inputs (all known now)
        and writes outputs ``e ..``, never one before its own end: so the chunk's inputs are
        written, every level of its tile ends runs (one FFT call per level size, all rows), and
        each output is then ``c[t]`` (everything before t's tile) plus the direct part from its
        own tile (one batched FFT over the tiles). The last, partial, tile's outputs become the
        rows' current tile."""
        b0, n = self.tile_len, u.shape[-1]
        self._x[index, :, start : start + n] = u
        run_scheduled(
            RowTileEnd(self, row, end, stepped=False)
            for end in range(start + b0, start + n + 1, b0)
            for row in rows
        )
        tiles = -(-n // b0)
        blocks = torch.nn.functional.pad(u, (0, tiles * b0 - n)).unflatten(-1, (tiles, b0))
        spectrum = self._tile_spectrum.unsqueeze(1)  # (D, 1, b0 + 1)
        direct = torch.fft.irfft(torch.fft.rfft(blocks, n=2 * b0) * spectrum, n=2 * b0)
        direct = direct[..., :b0].flatten(-2)  # (R, D, tiles * b0): within each tile
        y = self._c[index, :, start : start + n] + direct[..., :n]
        if n % b0:  # the chunk ends inside its last tile
            last = start + (tiles - 1) * b0
            tile = self._c[index, :, last : last + b0] + direct[..., last - start :]
            self._c_tile[index] = tile.transpose(1, 2)
            self._x_tile[index, : start + n - last] = u[..., last - start :].transpose(1, 2)
        elif start + n < self.max_len:  # at a tile's start: the tile's known part
            self._c_tile[index] = self._c[index, :, start + n : start + n + b0].transpose(1, 2)
        return y

    def prepare_traced(self, positions: Sequence[int]) -> None:
        """Ready :meth:`step_traced`: every row's place in its tile, the index tensor it reads
        (eager calls do not keep it); a ValueError in half precision, which has no traced
        step."""
        check_traced_dtype(self.dtype, self.compute_dtype)
        for buffer in (self._x, self._c):  # one graph of the tile ends for every max_len
            torch._dynamo.maybe_mark_dynamic(buffer, 2)
        places = [p % self.tile_len for p in positions]
        self._index.copy_(torch.tensor(places, device=self.device))

    def traced_tensors(self) -> list[torch.Tensor]:
        """What :meth:`step_traced` and the graph of its :meth:`traced_work` read or update in
        place (the filter spectra aside: made once, never moved)."""
        tiles = [self._x_tile, self._c_tile, self._pushes, self._index, self._all_rows]
        return [self._x, self._c, *tiles]

    def _push(self, u: torch.Tensor, index: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """``u`` ``(R, D)`` to its rows' tiles at their places ``j`` ``(R,)``: the input to place
        ``j_r`` of the tile, ``h[t - j_r] u_r`` to every place ``t >= j_r`` of the outputs;
        returns the outputs at ``j_r``."""
        self._x_tile.index_put_((index, j), u)
        self._c_tile.index_add_(0, index, self._pushes.index_select(0, j) * u[:, None])
        return self._c_tile[index, j]

    def _row_tensor(self, rows: Sequence[int]) -> torch.Tensor:
        if tuple(rows) == self._every_row:
            return self._all_rows
        return torch.tensor(list(rows), device=self.device)

    def _check(self, u: torch.Tensor, rows: Sequence[int], dims: int) -> None:
        if tuple(rows) != self._every_row:  # (every row, in order, is valid)
            rows = list(rows)
            if not rows or len(set(rows)) != len(rows):
                raise ValueError(f"rows must be distinct and non-empty, got {rows}")
            if not all(isinstance(r, int) and 0 <= r < self.batch_size for r in rows):
                raise ValueError(f"rows must be ints in [0, {self.batch_size}), got {rows}")
        if (
            not isinstance(u, torch.Tensor)
            or u.dim() != dims
            or u.shape[:2]
            != (
                len(rows),
                self.channels,
            )
        ):
            what = "(rows, channels)" if dims == 2 else "(rows, channels, n)"
            shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"u must have shape {what} with channels={self.channels}, got {shape}")
        if dims == 3 and u.shape[-1] < 1:
            raise ValueError("u must hold at least one input")
        if u.dtype != self.dtype or u.device != self.device:
            raise TypeError(f"u must be {self.dtype} on {self.device}, got {u.dtype} on {u.device}")

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.compute_dtype, device=self.device)

    def __repr__(self) -> str:
        return (
            f"ContinuousRows(channels={self.channels}, max_len={self.max_len}, "
            f"batch_size={self.batch_size}, tile_len={self.tile_len}, dtype={self.dtype})"
        )


class RowTileEnd(ScheduledWork):
    """The end of a tile of one row after ``seen`` inputs: the tile filed into the row's ``x``,
    then the level ``b = seen & -seen``: the block ``x[seen-b : seen]`` adds its contribution to
    outputs ``seen .. seen+b-1`` (an FFT of length 2b), and the row's next tile of ``c`` is
    loaded. Tile ends with levels of one size run as one FFT call across rows and engines."""

    def __init__(self, engine: ContinuousRows, row: int, seen: int, stepped: bool = True):
        self.engine, self.row, self.seen, self.stepped = engine, row, seen, stepped
        self.level = seen & -seen if seen < engine.max_len else 0  # 0: the row is full
        self.key = (self.level, engine.channels, engine.compute_dtype, engine.device)

    def run(self) -> None:
        self.run_batch([self])

    @classmethod
    def run_batch(cls, works: list[RowTileEnd]) -> None:
        for w in works:  # (a chunk's tile ends, not stepped, have their inputs in x already)
            if w.stepped:
                b0 = w.engine.tile_len
                w.engine._x[w.row, :, w.seen - b0 : w.seen] = w.engine._x_tile[w.row].t()
        b = works[0].level
        if not b:
            return
        future = block_futures(
            [w.engine._x[w.row, :, w.seen - b : w.seen] for w in works],
            [w.engine._spectra[b] for w in works],
            b,
        )
        for w, y in zip(works, future, strict=True):
            c, seen, b0 = w.engine._c, w.seen, w.engine.tile_len
            keep = min(b, c.shape[-1] - seen)
            c[w.row, :, seen : seen + keep] += y[:, :keep]
            if w.stepped:  # the row's next tile (a chunk sets its own at its end)
                w.engine._c_tile[w.row] = c[w.row, :, seen : seen + b0].t()


def run_row_tile_ends(
    buffers: tuple[tuple[torch.Tensor, ...], ...],
    pattern: tuple[int, int, int],
    args: torch.Tensor,
) -> None:
    """The tile ends of one level in a compiled step of :class:`ContinuousRows` engines (the
    layers of a model, whose rows share their positions), tensor operations alone: a
    fixed-shape function of ``pattern`` (what: the tile b0, the level b, how many rows end a
    block of it) whose rows and positions come in ``args`` (where, a LongTensor: the rows, then
    their inputs seen), so that one graph serves every position with that pattern
    (:meth:`ContinuousRows.traced_work`).

    For each row, having seen ``s`` inputs (a multiple of b0, with ``b = s & -s``): its tile is
    filed, ``x[s - b0 : s] = x_tile``; the block ``x[s - b : s]`` adds its contribution to the
    outputs ``s .. s + b - 1`` (an FFT of length 2b, every row and layer in one call; outputs
    past the buffer are dropped); its next tile of outputs is loaded, ``c_tile = c[s : s + b0]``.
    Level 0 (a full row) only files the tile.

    buffers : for each engine ``(x, c, x_tile, c_tile[, spectrum])``: ``x``, ``c`` ``(B, D, T)``,
        the tiles ``(B, b0, D)``, and for a level the filter's spectrum ``(D, b + 1)``.
    """
    b0, level, count = pattern
    rows, seen = args[:count], args[count:]
    lags = torch.arange(b0, device=args.device)
    tile = rows[:, None], slice(None), (seen - b0)[:, None] + lags  # x[rows, :, s-b0 .. s-1]
    for x, _, x_tile, *_ in buffers:
        x[tile] = x_tile[rows]  # (count, b0, D)
    if not level:
        return
    span = torch.arange(level, device=args.device)
    blocks = [x[rows[:, None], :, (seen - level)[:, None] + span] for x, *_ in buffers]
    future = block_futures(
        [b.transpose(1, 2) for b in blocks], [e[4] for e in buffers], level
    )  # (engines, count, D, level)
    _, c, *_ = buffers[0]  # (a session's engines of one group share shapes and max_len)
    outputs = seen[:, None] + span  # (count, level)
    kept = (outputs < c.shape[-1])[:, None]  # (count, 1, level)
    channels = torch.arange(c.shape[1], device=args.device)[:, None]  # (D, 1)
    where = rows[:, None, None], channels, outputs.clamp(max=c.shape[-1] - 1)[:, None]
    for (_, c, _, c_tile, _), y in zip(buffers, future, strict=True):
        c.index_put_(where, y * kept, accumulate=True)
        c_tile[rows] = c[rows[:, None], :, seen[:, None] + lags]  # (count, b0, D)


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
    shared_attributes = ("h", "_h_head", "_h_rests", "_spectra")

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

    rows_engine = ContinuousRows

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
        length = -(-remaining // b0) * b0  # whole tiles
        self._remaining = remaining
        self._offset = self.max_len - remaining  # global position of local step 0
        # Long buffers are channel-major: the FFTs of the levels run along their last dimension.
        self._x = self._zeros(batch, channels, length)  # generated inputs
        self._c = self._zeros(batch, channels, length)  # known part of every future output
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
        future = block_futures(
            [w.engine._x[..., w.seen - b : w.seen] for w in works],
            [w.engine._spectra[b] for w in works],
            b,
        )
        for work, y in zip(works, future, strict=True):
            engine, seen = work.engine, work.seen
            keep = min(b, engine._c.shape[-1] - seen)
            engine._c[..., seen : seen + keep] += y[..., :keep]
            engine._c_tile.copy_(engine._c[..., seen : seen + engine.tile_len].permute(2, 0, 1))
