"""Forking a sequence at the engine level: ``OnlineConvEngine.copy`` (the per-row engines'
fork) and ``RowsEngine.save_rows`` / ``load_rows`` (every method's rows form). A copy taken at
any position (a prompt, a chunk, the middle of a tile or an epoch, deamortized jobs in flight)
goes on exactly as the original would, in a feedback loop where the next input is the last
output; the original goes on untouched; a saved state is never changed by the rows loaded
from it. Float64 against the plain-loop reference convolution."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from futurefill.online import ENGINES, METHODS, deamortized, make_engine, make_rows_engine
from futurefill.online.modal import ModalFilter
from reference import decaying_filter, random_input, reference_feedback, rel_err

L, B, D = 40, 2, 3
KNOBS = {"continuous": {"tile_len": 4}, "deamortized": {"tile_len": 2}, "epoched": {"epoch_len": 5}}


def feedback(engine, u_t: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` steps of ``u[t+1] = tanh(y[t])`` from ``u_t``; (inputs, outputs) ``(B, D, n)``."""
    inputs, outputs = [], []
    for _ in range(steps):
        y = engine.step(u_t)
        inputs.append(u_t)
        outputs.append(y)
        u_t = torch.tanh(y)
    empty = u_t.new_empty(*u_t.shape, 0)
    return tuple(torch.stack(x, -1) if x else empty for x in (inputs, outputs))


@pytest.fixture(params=[False, True], ids=["jobs-at-block-ends", "jobs-in-flight"])
def background_jobs(request, monkeypatch):
    """With True every deamortized job goes to the worker thread (at these sizes they would
    otherwise run at once at their block's end): a copy is taken with jobs in flight."""
    if request.param:
        monkeypatch.setattr(deamortized, "SMALL_JOB_POINTS", 0)
    return request.param


@pytest.mark.parametrize("method", METHODS)
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompt=st.integers(0, 17), before=st.integers(0, 9), seed=st.integers(0, 99))
def test_a_copy_goes_on_as_the_original(method, prompt, before, seed, background_jobs):
    h = decaying_filter(D, L, seed=seed)
    u = random_input(B, D, L, seed=seed + 1)
    engine = make_engine(h, method, batch_size=B, **KNOBS.get(method, {}))
    start = u[..., 0]
    if prompt:
        start = torch.tanh(engine.prefill(u[..., :prompt])[..., -1])
    _, first = feedback(engine, start, before)
    u_t = torch.tanh(first[..., -1]) if before else start
    fork = engine.copy()
    assert fork.position == engine.position == prompt + before
    steps = L - engine.position
    _, original_out = feedback(engine, u_t, steps)
    _, fork_out = feedback(fork, u_t, steps)
    assert torch.equal(fork_out, original_out)  # the same computation: the same bits
    p = u[..., :prompt].numpy() if prompt else None
    _, expected = reference_feedback(u[..., 0].numpy(), h.numpy(), L, p)
    assert rel_err(fork_out, expected[..., prompt + before :]) < 1e-10


def test_a_copy_shares_the_filter_tables_and_owns_its_buffers():
    h = decaying_filter(D, L)
    for method in METHODS:
        engine = make_engine(h, method, batch_size=B, **KNOBS.get(method, {}))
        engine.prefill(random_input(B, D, 7))
        fork = engine.copy()
        assert fork.h is engine.h, method
        owned = {id(t) for t in engine._buffers()}
        shared = {id(getattr(engine, name)) for name in engine.shared_attributes}
        for name, value in vars(fork).items():
            if isinstance(value, torch.Tensor) and name not in engine.shared_attributes:
                assert id(value) not in owned | shared, (method, name)


def modal_filter(seed: int) -> ModalFilter:
    g = torch.Generator().manual_seed(seed)
    log_poles = torch.complex(
        -torch.rand(D, 4, generator=g, dtype=torch.float64) - 0.05,
        torch.rand(D, 4, generator=g, dtype=torch.float64),
    )
    residues = torch.complex(*torch.randn(2, D, 4, generator=g, dtype=torch.float64))
    return ModalFilter(log_poles, residues)


@pytest.mark.parametrize("method", list(ENGINES))
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_rows_loaded_from_a_saved_row_go_on_as_it_would(method, seed):
    """A row at a random position (a prompt, maybe chunked, then steps) saved; other rows that
    held other sequences take it, all go on in their own feedback loops and match the
    reference; the saved state is unchanged throughout (bytes compared)."""
    rng = random.Random(seed)
    rows = 4
    h = modal_filter(seed) if method == "modal" else decaying_filter(D, L, seed=seed)
    taps = h.taps(L) if method == "modal" else h
    engine = make_rows_engine(h, method, max_len=L, batch_size=rows, **KNOBS.get(method, {}))
    positions = [0] * rows

    def step(active: list[int], u: torch.Tensor) -> torch.Tensor:
        y, work = engine.step(u, active, [positions[r] for r in active])
        for work_item in work:
            work_item.run()
        for r in active:
            positions[r] += 1
        return y

    for r in range(1, rows):  # the other rows hold sequences of their own first
        positions[r] = rng.randint(1, 20)
        engine.extend(random_input(1, D, positions[r], seed=r), [r], 0)
    prompt = rng.randint(1, 15)
    u = random_input(1, D, prompt, seed=seed)
    cut = rng.randint(1, prompt)
    engine.extend(u[..., :cut], [0], 0)
    if cut < prompt:
        engine.extend(u[..., cut:], [0], cut)
    positions[0] = prompt
    sequence = [u[0, :, t] for t in range(prompt)]
    for _ in range(rng.randint(0, 7)):
        u_t = torch.tanh(sequence[-1])
        step([0], u_t[None])
        sequence.append(u_t)
    saved = engine.save_rows([0], positions[0])
    before = copy.deepcopy(saved)
    targets = [1, 3]
    engine.reset_rows(targets, [positions[r] for r in targets])
    for r in targets:
        engine.load_rows([r], positions[0], saved)
    for r in targets:
        positions[r] = positions[0]
    live = [0, 1, 3]
    inputs = {r: list(sequence) for r in live}
    outputs = {r: [] for r in live}
    u_next = torch.stack([torch.tanh(inputs[r][-1]) * (1 + i) for i, r in enumerate(live)])
    while positions[0] < L:
        y = step(live, u_next)
        for i, r in enumerate(live):
            inputs[r].append(u_next[i])
            outputs[r].append(y[i])
        u_next = torch.tanh(y)
    for r in live:
        x = torch.stack(inputs[r], -1).numpy()
        expected = np.einsum("dts,ds->dt", _lagged(x), taps.numpy())
        got = torch.stack(outputs[r], -1)
        assert rel_err(got, expected[:, -got.shape[-1] :]) < 1e-10, r
    for a, b in zip(_tensors(saved), _tensors(before), strict=True):
        assert torch.equal(a, b)


def _lagged(x: np.ndarray) -> np.ndarray:
    """``(D, n)`` inputs -> ``(D, n, n)`` with ``[d, t, s] = x[d, t - s]`` (0 for s > t)."""
    d, n = x.shape
    out = np.zeros((d, n, n))
    for t in range(n):
        out[:, t, : t + 1] = x[:, t::-1]
    return out


def _tensors(saved: list) -> list[torch.Tensor]:
    """Every tensor of a saved state (a per-row engine's copy: its own, not the filter tables
    it shares)."""
    found = []
    for item in saved:
        if isinstance(item, torch.Tensor):
            found.append(item)
        else:
            found += [
                value
                for name, value in sorted(vars(item).items())
                if isinstance(value, torch.Tensor) and name not in item.shared_attributes
            ]
    return found
