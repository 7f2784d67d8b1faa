"""ContinuousRows at the edges of its schedule: a row reset exactly where a level has just written
the furthest ahead (position p = b0 * 2^k, whose level wrote outputs p .. 2p - 1), then driven past
2p; resets of several rows at once, at position 0, beside a row in the middle of its tile; rows
that reach max_len exactly, by steps and by chunks ending at a tile's end or at max_len. Every
output of every row, between any two of its resets, is checked against the float64 reference
convolution of that row's own inputs (numpy, tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill.online import ContinuousRows, run_scheduled
from reference import decaying_filter, reference_conv, rel_err

CHANNELS = 2
TOL = 1e-10  # float64, relative to the largest output of a row's sequence

# ---------------------------------------------------------------- the engine's API, in one place
# Every engine call goes through these helpers (only they change with the API). Positions are the
# caller's: the test keeps every row's own and hands them over.


def _engine(h: torch.Tensor, *, max_len: int, batch_size: int, tile_len: int) -> ContinuousRows:
    return ContinuousRows(h, max_len=max_len, batch_size=batch_size, tile_len=tile_len)


def _step(engine: ContinuousRows, u: torch.Tensor, rows: list[int], positions: list[int]):
    """One input per row, ``u`` ``(len(rows), channels)``, the rows at ``positions``: their
    outputs ``(len(rows), channels)``, the work the step scheduled already run."""
    y, work = engine.step(u, rows, positions)
    run_scheduled(work)
    return y


def _extend(engine: ContinuousRows, u: torch.Tensor, rows: list[int], start: int):
    """The next ``n`` inputs ``u`` ``(len(rows), channels, n)`` of rows all at ``start``."""
    return engine.extend(u, rows, start)


def _reset(engine: ContinuousRows, rows: list[int], positions: list[int]) -> None:
    """``rows`` (at ``positions``) back to position 0."""
    engine.reset_rows(rows, positions)


# ---------------------------------------------------------------- a driven engine and its check


class Rows:
    """A ContinuousRows engine fed random float64 inputs, with every row's inputs and outputs
    since its last reset; the sequences that resets ended are kept for :meth:`check`."""

    def __init__(self, tile_len: int, max_len: int, batch_size: int = 3, seed: int = 0):
        self.tile_len, self.max_len, self.batch_size = tile_len, max_len, batch_size
        self.h = decaying_filter(CHANNELS, max_len + 3, seed=seed)
        self.engine = _engine(self.h, max_len=max_len, batch_size=batch_size, tile_len=tile_len)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.inputs: list[list[torch.Tensor]] = [[] for _ in range(batch_size)]
        self.outputs: list[list[torch.Tensor]] = [[] for _ in range(batch_size)]
        self.ended: list[tuple[str, list, list]] = []  # (what, inputs, outputs)

    def position(self, row: int) -> int:
        return len(self.inputs[row])

    def room(self, row: int) -> int:
        return self.max_len - self.position(row)

    def _random(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen, dtype=torch.float64)

    def step(self, rows: list[int]) -> None:
        u = self._random(len(rows), CHANNELS)
        y = _step(self.engine, u, rows, [self.position(r) for r in rows])
        assert y.shape == (len(rows), CHANNELS)
        for i, row in enumerate(rows):
            self.inputs[row].append(u[i])
            self.outputs[row].append(y[i])

    def extend(self, rows: list[int], n: int) -> None:
        start = self.position(rows[0])
        assert all(self.position(r) == start for r in rows) and start + n <= self.max_len
        u = self._random(len(rows), CHANNELS, n)
        y = _extend(self.engine, u, rows, start)
        assert y.shape == u.shape
        for i, row in enumerate(rows):
            self.inputs[row] += list(u[i].unbind(-1))
            self.outputs[row] += list(y[i].unbind(-1))

    def reset(self, rows: list[int]) -> None:
        positions = [self.position(r) for r in rows]
        _reset(self.engine, rows, positions)
        for row, p in zip(rows, positions, strict=True):
            what = f"row {row} up to its reset at {p}"
            self.ended.append((what, self.inputs[row], self.outputs[row]))
            self.inputs[row], self.outputs[row] = [], []

    def step_to(self, row: int, position: int, *others: int) -> None:
        """Step ``row`` to ``position``, the rows ``others`` along while they have room."""
        while self.position(row) < position:
            self.step([row, *(r for r in others if self.room(r))])

    def check(self) -> None:
        current = [
            (f"row {r} now", self.inputs[r], self.outputs[r]) for r in range(len(self.inputs))
        ]
        for what, inputs, outputs in [*self.ended, *current]:
            if not inputs:
                continue
            u = torch.stack(inputs, -1).numpy()  # (D, n)
            y = torch.stack(outputs, -1).numpy()
            expected = reference_conv(u[None], self.h.numpy())[0]
            error = rel_err(y, expected)
            if error >= TOL:  # name the first output that is wrong
                scale = np.abs(expected).max()
                first = int(np.argmax(np.abs(y - expected).max(0) >= TOL * scale))
                pytest.fail(
                    f"{what} (tile_len={self.tile_len}, max_len={self.max_len}): relative error "
                    f"{error:.2e}, first at output {first} of {u.shape[-1]}"
                )


def level_ends(tile_len: int, top: int = 3) -> list[int]:
    """The positions b0 * 2^k (k <= top) where a tile end's level reaches furthest: outputs up to
    2p - 1."""
    return [tile_len << k for k in range(top + 1)]


# ---------------------------------------------------------------- resets at b0 * 2^k


@pytest.mark.parametrize("after", ["step", "extend"])
@pytest.mark.parametrize("drive", ["step", "extend", "chunks"])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("tile_len", [1, 2, 4])
def test_reset_at_a_level_end_then_past_twice_that_position(tile_len, k, drive, after):
    """Row 1 reaches p = b0 * 2^k (the level just run wrote its outputs p .. 2p - 1), is reset,
    and runs on to max_len > 2p: none of what its first life wrote may reach the second. Row 0
    stays in the middle of its tile meanwhile, and must not notice."""
    p = tile_len << k
    max_len = 2 * p + tile_len + 1
    rows = Rows(tile_len, max_len, seed=17 * k + tile_len)
    rows.extend([0], tile_len // 2 + 1)  # row 0 mid-tile (for b0 > 2)
    if drive == "step":
        rows.step_to(1, p, 0)
    elif drive == "extend":
        rows.extend([1], p)  # a prompt of p: its last tile end runs level p
    else:  # from inside the first tile to the tile end at p
        rows.extend([1], 1)
        if p > 1:
            rows.extend([1], p - 1)
    assert rows.position(1) == p
    rows.reset([1])
    if after == "step":
        rows.step_to(1, max_len, 0)
    else:
        sizes = [1, tile_len, 3, 2 * tile_len + 1]
        for i in range(max_len):
            if not rows.room(1):
                break
            rows.extend([1], min(sizes[i % len(sizes)], rows.room(1)))
            if rows.room(0):
                rows.step([0])
    assert rows.position(1) == max_len > 2 * p
    rows.check()


@pytest.mark.parametrize("tile_len", [1, 2, 4])
def test_rows_reset_together_at_different_level_ends(tile_len):
    """One reset call for three rows at different positions b0 * 2^k, the furthest one in the
    middle of the call (each row's own position must count, not the first's or the last's), and
    a row in the middle of a tile beside them; then each runs past twice where it was reset."""
    small, medium, large = level_ends(tile_len)[1:]
    max_len = 2 * large + 3
    rows = Rows(tile_len, max_len, batch_size=4, seed=tile_len)
    rows.extend([2], large)
    rows.step_to(0, small, 1)
    rows.step_to(1, medium)
    rows.step_to(3, tile_len + tile_len // 2 + 1)  # row 3 mid-tile
    assert [rows.position(r) for r in (1, 2, 0)] == [medium, large, small]
    rows.reset([1, 2, 0])
    rows.step_to(2, max_len, 0, 1, 3)
    rows.check()


@pytest.mark.parametrize("tile_len", [1, 2, 4])
def test_resets_at_position_zero_and_of_every_row(tile_len):
    """A reset of a row that never started, a reset right after a reset, and one reset call of
    every row (at a level end, mid-tile and at 0); then rows restarted together by one chunk."""
    p = level_ends(tile_len)[2]
    max_len = 2 * p + 1
    rows = Rows(tile_len, max_len, seed=5 + tile_len)
    rows.reset([0])  # never used
    rows.reset([0])
    rows.step_to(0, 3)
    rows.extend([1], p)
    rows.reset([1])
    rows.reset([1])  # at 0 again
    rows.step_to(1, p, 0)
    rows.reset([0, 1, 2])  # every row: at p + 3, at p (a level end) and at 0
    rows.extend([2, 0], tile_len + 1)  # two rows restarted by one chunk
    rows.extend([1], p)
    rows.step_to(1, max_len, 0, 2)
    rows.check()


@pytest.mark.parametrize("spare", [0, 1])
@pytest.mark.parametrize("tile_len", [1, 2, 4])
def test_rows_that_reach_max_len_exactly(tile_len, spare):
    """max_len a level end b0 * 2^k (spare=0: its tile end runs no level) or one past it: rows
    reach max_len by steps, by one chunk, and by chunks that end on tile ends; reset there and
    reach it again the other ways; a full row refuses another input."""
    max_len = level_ends(tile_len)[2] + spare
    rows = Rows(tile_len, max_len, seed=tile_len + 10 * spare)

    def by_tiles(row: int) -> None:  # chunks of one tile, then the rest: every one ends on a tile
        while rows.room(row):
            rows.extend([row], min(tile_len, rows.room(row)))

    for turn in range(3):
        for row, how in enumerate(["step", "chunk", "tiles"][turn:] + ["step", "chunk"][:turn]):
            if how == "step":
                rows.step_to(row, max_len)
            elif how == "chunk":
                rows.extend([row], max_len)
            else:
                by_tiles(row)
            assert rows.position(row) == max_len
            with pytest.raises(RuntimeError, match="max_len"):  # full: no input more
                rows.step([row])
        rows.reset([0, 1, 2])
    rows.step_to(0, 1)  # after a reset at max_len: a row starts again
    rows.check()


# ---------------------------------------------------------------- random resets on level ends


@settings(max_examples=30, deadline=None)
@given(
    tile_len=st.sampled_from([1, 2, 4]),
    batch_size=st.integers(1, 3),
    extra=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_random_resets_on_level_ends(tile_len, batch_size, extra, seed, data):
    """Rows driven by random steps (with other rows along) and chunks to positions b0 * 2^k, reset
    there, then every row on to max_len > twice any of those positions."""
    max_len = 2 * level_ends(tile_len)[-1] + extra
    rows = Rows(tile_len, max_len, batch_size=batch_size, seed=seed)
    any_row = st.integers(0, batch_size - 1)
    for _ in range(data.draw(st.integers(1, 5), label="resets")):
        row = data.draw(any_row, label="row")
        target = data.draw(st.sampled_from(level_ends(tile_len)), label="reset at")
        if rows.position(row) > target:
            rows.reset([row])  # (a reset anywhere)
        while rows.position(row) < target:
            if data.draw(st.booleans(), label="chunk"):
                rows.extend([row], data.draw(st.integers(1, target - rows.position(row))))
            else:
                others = [r for r in range(batch_size) if r != row and rows.room(r)]
                along = data.draw(
                    st.lists(st.sampled_from(others), unique=True) if others else st.just([])
                )
                rows.step([row, *along])
        rows.reset([row])
    while live := [r for r in range(batch_size) if rows.room(r)]:
        if data.draw(st.booleans(), label="chunk"):
            row = data.draw(st.sampled_from(live))
            rows.extend([row], data.draw(st.integers(1, rows.room(row))))
        else:
            rows.step(data.draw(st.permutations(live)))
    rows.check()
