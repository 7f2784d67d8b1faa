"""Method "modal": filters in modal form decoded by their recurrence, against the float64
reference convolution of the filter's taps (computed independently, straight from the
definition h[c, t] = Re sum_k r[c, k] p[c, k]^t)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill import decoding
from futurefill.nn import LongConv
from futurefill.online import (
    ENGINES,
    METHODS,
    ModalFilter,
    ModalRows,
    make_engine,
    make_rows_engine,
    run_scheduled,
)
from reference import reference_conv, reference_feedback, rel_err


def modal_filter(channels: int, state: int, complex_poles: bool, seed: int = 0) -> ModalFilter:
    """Decaying poles (|p| in [0.5, 0.99]), O(1) residues, float64."""
    gen = torch.Generator().manual_seed(seed)
    magnitude = 0.5 + 0.49 * torch.rand(channels, state, generator=gen, dtype=torch.float64)
    residues = torch.randn(channels, state, generator=gen, dtype=torch.float64)
    if not complex_poles:
        return ModalFilter(magnitude.log(), residues)
    angle = (torch.rand(channels, state, generator=gen, dtype=torch.float64) - 0.5) * 2 * np.pi
    imag = torch.randn(channels, state, generator=gen, dtype=torch.float64)
    return ModalFilter(torch.complex(magnitude.log(), angle), torch.complex(residues, imag))


def reference_taps(f: ModalFilter, length: int) -> np.ndarray:
    """h[c, t] = Re sum_k r p^t, by numpy powers of complex numbers (not exp of t log p)."""
    p = np.exp(f.log_poles.numpy().astype(np.complex128))
    r = f.residues.numpy().astype(np.complex128)
    t = np.arange(length)
    return np.real((r[..., None] * p[..., None] ** t).sum(axis=1))


def test_registered_for_modal_filters_only():
    assert "modal" in ENGINES and "modal" not in METHODS  # METHODS: those for any filter
    with pytest.raises(TypeError, match="modal form"):
        make_engine(torch.randn(2, 10), "modal", max_len=10)


@pytest.mark.parametrize("complex_poles", [False, True])
@pytest.mark.parametrize("length", [1, 37, 300])
def test_taps_are_the_definition(complex_poles, length):
    f = modal_filter(5, 4, complex_poles)
    assert rel_err(f.taps(length), reference_taps(f, length)) < 1e-12


@pytest.mark.parametrize("complex_poles", [False, True])
@pytest.mark.parametrize("prompt_len", [0, 1, 2, 129, 200])
@pytest.mark.parametrize("block_len", [1, 16, 128])
def test_prompt_then_steps_equal_the_reference(complex_poles, prompt_len, block_len):
    f = modal_filter(3, 6, complex_poles, seed=prompt_len)
    length, batch = 257, 2
    u = torch.randn(
        batch, 3, length, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    expected = reference_conv(u.numpy(), reference_taps(f, length))
    engine = make_engine(f, "modal", max_len=length, batch_size=batch, block_len=block_len)
    parts = [engine.prefill(u[..., :prompt_len])] if prompt_len else []
    parts += [engine.step(u[..., t])[..., None] for t in range(prompt_len, length)]
    assert rel_err(torch.cat(parts, dim=-1), expected) < 1e-10


def test_feedback_loop_equals_the_reference():
    f = modal_filter(4, 8, complex_poles=True, seed=3)
    length, prompt = 150, torch.randn(2, 4, 9, dtype=torch.float64)
    u0 = np.zeros((2, 4))
    _, outputs = reference_feedback(u0, reference_taps(f, length), length, prompt.numpy())
    engine = make_engine(f, "modal", max_len=length, batch_size=2)
    y = engine.prefill(prompt)
    got = [y]
    for _ in range(9, length):
        y_t = engine.step(torch.tanh(got[-1][..., -1]))
        got.append(y_t[..., None])
    assert rel_err(torch.cat(got, dim=-1), outputs) < 1e-10


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    complex_poles=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_rows_at_their_own_positions_each_get_their_own_convolution(lengths, complex_poles, seed):
    """Rows start, extend and step at their own times; each row's outputs are the convolution
    of its own inputs alone (rows engine; reset rows start again)."""
    f = modal_filter(2, 3, complex_poles, seed=seed)
    batch, total = len(lengths), 60
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, 2, total, generator=gen, dtype=torch.float64)
    taps = reference_taps(f, total)
    engine = make_rows_engine(f, "modal", max_len=total, batch_size=batch, block_len=8)
    assert isinstance(engine, ModalRows)
    engine.reset_rows(range(batch), [0] * batch)
    outputs = [[] for _ in range(batch)]
    for row, n in enumerate(lengths):  # each row's prompt alone
        outputs[row].append(engine.extend(u[row : row + 1, :, :n], [row], 0))
    for t in range(20):  # then steps of the rows still short of 40 + 20
        y, work = engine.step(
            torch.stack([u[row, :, lengths[row] + t] for row in range(batch)]),
            list(range(batch)),
            [lengths[row] + t for row in range(batch)],
        )
        run_scheduled(work)
        for row in range(batch):
            outputs[row].append(y[row : row + 1, :, None])
    for row, n in enumerate(lengths):
        got = torch.cat(outputs[row], dim=-1)
        expected = reference_conv(u[row : row + 1, :, : n + 20].numpy(), taps)
        assert rel_err(got, expected) < 1e-10
    engine.reset_rows([0], [lengths[0] + 20])
    again = engine.extend(u[:1, :, :5], [0], 0)
    assert rel_err(again, reference_conv(u[:1, :, :5].numpy(), taps)) < 1e-10


@pytest.mark.parametrize("complex_poles", [False, True])
def test_float32_within_rounding(complex_poles):
    f64 = modal_filter(8, 16, complex_poles, seed=5)
    single = torch.complex64 if complex_poles else torch.float32
    f32 = ModalFilter(f64.log_poles.to(single), f64.residues.to(single))
    length = 500
    u = torch.randn(1, 8, length, generator=torch.Generator().manual_seed(2))
    expected = reference_conv(u.double().numpy(), reference_taps(f64, length))
    engine = make_engine(f32, "modal", max_len=length)
    y = torch.cat([engine.prefill(u[..., :77]), engine.extend(u[..., 77:])], dim=-1)
    assert y.dtype == torch.float32
    assert rel_err(y, expected) < 1e-4


def test_bfloat16_state_stays_float32():
    f = ModalFilter(torch.full((2, 3), -0.1), torch.ones(2, 3))
    f16 = ModalFilter(f.log_poles.bfloat16(), f.residues.bfloat16())
    engine = make_rows_engine(f16, "modal", max_len=10, batch_size=1)
    assert engine.state.dtype == torch.float32
    y, _ = engine.step(torch.ones(1, 2, dtype=torch.bfloat16), [0], [0])
    assert y.dtype == torch.bfloat16


def test_a_module_without_a_modal_form_is_refused_by_name():
    conv = LongConv(3, max_len=20)
    with decoding(conv, batch_size=1, max_len=20, method="modal") as session:
        with pytest.raises(ValueError, match="has no filter in modal form"):
            session.feed(torch.randn(1, 4, 3))
        assert session.positions.tolist() == [0]


def test_a_modal_long_conv_decodes_with_every_method_alike():
    f = modal_filter(3, 5, complex_poles=True, seed=9)
    conv = LongConv(3, max_len=64, filter=f.taps, modal=lambda: f, skip=True).double()
    x = torch.randn(2, 50, 3, dtype=torch.float64)
    expected = conv(x)
    for method in ENGINES:
        with decoding(conv, batch_size=2, max_len=64, method=method) as session:
            got = [session.feed(x[:, :7])] + [session.feed(x[:, t : t + 1]) for t in range(7, 50)]
        assert rel_err(torch.cat(got, dim=1), expected) < 1e-10, method
