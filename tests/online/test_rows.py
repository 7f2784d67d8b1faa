"""The rows form of every method (ContinuousRows for continuous, PerRowEngines for the others):
rows at their own positions in one engine state. Rows start, step, take chunks (prompts, chunked
prompts) and restart at random, and every row's outputs are the float64 reference convolution of
its own inputs, whatever the other rows do; the next input may depend on the last output
(feedback). Positions are the caller's: :class:`Rows` keeps them as a session does."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill.online import METHODS, ContinuousRows, RowsEngine, make_rows_engine, run_scheduled
from reference import decaying_filter, reference_conv, rel_err


class Rows:
    """A rows engine and its rows' positions, kept as a decoding session keeps them."""

    def __init__(self, engine: RowsEngine):
        self.engine = engine
        self.positions = dict.fromkeys(range(engine.batch_size), 0)
        self.batch_size, self.channels, self.max_len = (
            engine.batch_size,
            engine.channels,
            engine.max_len,
        )

    def extend(self, u, rows):
        y = self.engine.extend(u, rows, self.positions.get(rows[0], 0))
        for row in rows:
            self.positions[row] += u.shape[-1]
        return y

    def step(self, u, rows):
        y, work = self.engine.step(u, rows, [self.positions.get(r, 0) for r in rows])
        run_scheduled(work)
        for row in rows:
            self.positions[row] += 1
        return y

    def reset_rows(self, rows):
        self.engine.reset_rows(rows, [self.positions.get(r, 0) for r in rows])
        for row in rows:
            self.positions[row] = 0


class TracedRows(Rows):
    """A :class:`ContinuousRows` stepped as a compiled step steps it: every row through
    ``step_traced`` (a row that does not step gets a zero input, which leaves its tiles as they
    were), then the graph form of the step's tile ends (``traced_work``) run as the graph runs
    it, its rows and positions from a tensor; ``prepare_traced`` after every other call and
    after a step that left rows out (``step_traced`` moved their places too)."""

    def __init__(self, engine: ContinuousRows):
        super().__init__(engine)
        self.ready = False
        self.patterns: set = set()

    def extend(self, u, rows):
        self.ready = False
        return super().extend(u, rows)

    def reset_rows(self, rows):
        self.ready = False
        super().reset_rows(rows)

    def step(self, u, rows):
        engine, every = self.engine, [self.positions[r] for r in range(self.batch_size)]
        if not self.ready:
            engine.prepare_traced(every)
            self.ready = True
        full = u.new_zeros(self.batch_size, self.channels)
        full[list(rows)] = u
        y = engine.step_traced(full)[list(rows)]
        for work in engine.traced_work(rows, [every[r] for r in rows]):
            work.run((work.buffers,), work.pattern, torch.tensor(work.args))
            self.patterns.add(work.pattern)
        for row in rows:
            self.positions[row] += 1
        self.ready = len(rows) == self.batch_size
        return y


def run_rows(engine: Rows, h: torch.Tensor, seed: int, events: int, feedback: bool):
    """Random events on the engine's rows; returns every row's (inputs, outputs) since its last
    restart, and how many outputs were produced in all."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    rows = engine.batch_size
    inputs: dict[int, list] = {r: [] for r in range(rows)}
    outputs: dict[int, list] = {r: [] for r in range(rows)}
    produced = 0

    def fresh(n: int) -> torch.Tensor:
        return torch.randn(engine.channels, n, generator=gen, dtype=h.dtype)

    for _ in range(events):
        action = rng.random()
        if action < 0.05:  # a row restarts
            row = rng.randrange(rows)
            engine.reset_rows([row])
            inputs[row], outputs[row] = [], []
        elif action < 0.3:  # a chunk (a prompt, or the next piece of one, or after steps)
            row = rng.randrange(rows)
            n = rng.choice([1, 2, 3, rng.randint(1, 48)])
            if len(inputs[row]) + n > engine.max_len:
                continue
            u = fresh(n)
            y = engine.extend(u[None], [row])[0]
            inputs[row] += list(u.t())
            outputs[row] += list(y.t())
            produced += n
        else:  # a step of a random subset, in a random order
            live = [
                r for r in range(rows) if len(inputs[r]) < engine.max_len and rng.random() < 0.7
            ]
            if not live:
                continue
            rng.shuffle(live)
            if feedback:  # the next input is a function of the row's last output
                u = torch.stack(
                    [torch.tanh(outputs[r][-1]) if outputs[r] else fresh(1)[:, 0] for r in live]
                )
            else:
                u = fresh(len(live)).t().contiguous()
            y = engine.step(u, live)
            for i, row in enumerate(live):
                inputs[row].append(u[i])
                outputs[row].append(y[i])
            produced += len(live)
    return inputs, outputs, produced


def knob(method: str, tile_len: int) -> dict[str, int]:
    """The method's knob of about that size (tile_len or epoch_len), or none."""
    return {"continuous": {"tile_len": tile_len}, "deamortized": {"tile_len": tile_len}}.get(
        method, {"epoch_len": tile_len + 1} if method == "epoched" else {}
    )


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=12, deadline=None)
@given(
    max_len=st.integers(1, 90),
    rows=st.integers(1, 5),
    channels=st.integers(1, 4),
    tile_len=st.sampled_from([1, 2, 4, 8, 16]),
    feedback=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_row_gets_its_own_convolution(
    method, max_len, rows, channels, tile_len, feedback, seed
):
    h = decaying_filter(channels, max_len + seed % 7, seed=seed)
    engine = make_rows_engine(h, method, max_len=max_len, batch_size=rows, **knob(method, tile_len))
    engine = Rows(engine)
    inputs, outputs, produced = run_rows(engine, h, seed, events=80, feedback=feedback)
    assert produced > 0
    for row in range(rows):
        if not inputs[row]:
            continue
        u = torch.stack(inputs[row], -1)[None].numpy()
        expected = reference_conv(u, h.numpy())[0]
        assert rel_err(torch.stack(outputs[row], -1), expected) < 1e-10, row
        assert engine.positions[row] == len(inputs[row])


@settings(max_examples=25, deadline=None)
@given(
    max_len=st.integers(1, 90),
    rows=st.integers(1, 5),
    channels=st.integers(1, 4),
    tile_len=st.sampled_from([1, 2, 4, 8]),
    feedback=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_graph_form_of_the_tile_ends_gives_every_row_its_convolution(
    max_len, rows, channels, tile_len, feedback, seed
):
    """Traced steps whose tile ends run as a compiled step's graph runs them (one function per
    pattern, the rows and their positions from a tensor), between prompts, chunks and resets
    of rows at their own positions: the float64 reference, every row."""
    h = decaying_filter(channels, max_len + seed % 7, seed=seed)
    engine = TracedRows(ContinuousRows(h, max_len=max_len, batch_size=rows, tile_len=tile_len))
    inputs, outputs, produced = run_rows(engine, h, seed, events=80, feedback=feedback)
    assert produced > 0
    for row in range(rows):
        if inputs[row]:
            u = torch.stack(inputs[row], -1)[None].numpy()
            expected = reference_conv(u, h.numpy())[0]
            assert rel_err(torch.stack(outputs[row], -1), expected) < 1e-10, row
    levels = {level for _, level, _ in engine.patterns}
    assert all(level == 0 or tile_len <= level < max_len for level in levels)  # what, not where


def test_a_pattern_is_what_the_step_does_not_where():
    """Rows in lockstep: one pattern per level size (none for the steps that end no tile), the
    positions only in the args; rows at their own positions: a work per level that ends."""
    h = decaying_filter(2, 64, seed=1)
    engine = ContinuousRows(h, batch_size=2, tile_len=4)
    engine.prepare_traced([0, 0])
    patterns = {}
    for position in range(64):
        engine.step_traced(torch.randn(2, 2, dtype=h.dtype))
        works = engine.traced_work([0, 1], [position, position])
        assert len(works) == (0 if (position + 1) % 4 else 1)
        for work in works:
            work.run((work.buffers,), work.pattern, torch.tensor(work.args))
            patterns.setdefault(work.pattern, []).append(position + 1)
    assert sorted(patterns) == [
        (4, 0, 2),  # the last tile: filed, no output after it
        (4, 4, 2),
        (4, 8, 2),
        (4, 16, 2),
        (4, 32, 2),
    ]
    assert patterns[(4, 4, 2)] == [4, 12, 20, 28, 36, 44, 52, 60]
    works = engine.traced_work([1, 0], [35, 39])  # row 1 ends a tile at 36 (level 4), row 0 at 40
    assert [(w.pattern, w.args) for w in works] == [((4, 8, 1), (0, 40)), ((4, 4, 1), (1, 36))]


def test_float32_and_long_chunks():
    """float32 to its rounding; a prompt of many tiles (every level of them batched)."""
    h = decaying_filter(6, 700, dtype=torch.float32, seed=3)
    engine = Rows(ContinuousRows(h, batch_size=3, tile_len=8))
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(3, 6, 650, generator=gen)
    y0 = engine.extend(u[:1, :, :517], [0])  # 64 tiles and a piece
    y1 = engine.extend(u[1:2, :, :5], [1])
    steps = [engine.step(u[:2, :, t].clone(), [0, 1]) for t in range(5, 40)]
    y1_more = engine.extend(u[1:2, :, 40:400], [1])  # after steps, from inside a tile
    expected = reference_conv(u.double().numpy(), h.double().numpy())
    assert rel_err(y0[0], expected[0, :, :517]) < 1e-4
    assert rel_err(y1[0], expected[1, :, :5]) < 1e-4
    stepped = torch.stack([s[1] for s in steps], -1)
    assert rel_err(stepped, expected[1, :, 5:40]) < 1e-4
    assert rel_err(y1_more[0], expected[1, :, 40:400]) < 1e-4
    assert y0.dtype == torch.float32


def test_bad_input_is_refused_before_anything_changes():
    h = torch.randn(2, 10, dtype=torch.float64)
    rows = Rows(ContinuousRows(h, batch_size=2, tile_len=2))
    rows.extend(torch.randn(1, 2, 3, dtype=torch.float64), [0])
    engine = rows.engine
    snapshot = [t.clone() for t in (engine._x, engine._c, engine._c_tile, engine._x_tile)]
    bad = [
        (lambda: rows.step(torch.randn(1, 2, dtype=torch.float64), [0, 0]), "distinct"),
        (lambda: rows.step(torch.randn(1, 2, dtype=torch.float64), [2]), r"\[0, 2\)"),
        (lambda: rows.step(torch.randn(1, 3, dtype=torch.float64), [0]), "channels=2"),
        (lambda: rows.step(torch.randn(1, 2), [0]), "torch.float64"),
        (lambda: rows.extend(torch.randn(1, 2, 8, dtype=torch.float64), [0]), "no room"),
    ]
    for call, message in bad:
        with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
            call()
    for before, after in zip(
        snapshot, (engine._x, engine._c, engine._c_tile, engine._x_tile), strict=True
    ):
        assert torch.equal(before, after)
    assert rows.positions == {0: 3, 1: 0}
    with pytest.raises(ValueError, match="max_len 11 exceeds filter_len 10"):
        ContinuousRows(h, max_len=11)
