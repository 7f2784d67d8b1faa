"""extend(): a prompt fed in chunks (chunked prefill), and chunks after generated steps, give the
offline convolution's outputs for every engine, against the float64 reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill.online import ENGINES, METHODS, make_engine
from reference import decaying_filter, random_input, reference_conv, rel_err


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=15, deadline=None)
@given(
    length=st.integers(3, 80),
    cuts=st.lists(st.integers(1, 79), min_size=1, max_size=5),
    stepped=st.lists(st.integers(1, 79), max_size=3),
    batch=st.integers(1, 3),
    knob=st.sampled_from([1, 2, 4, 8]),
    seed=st.integers(0, 2**16),
)
def test_chunks_anywhere_match_the_float64_reference(
    method, length, cuts, stepped, batch, knob, seed
):
    """The sequence cut into chunks at ``cuts``; the positions in ``stepped`` are single steps
    (so some chunks come right after a prefill or extension, others after generated steps)."""
    h = decaying_filter(3, length, seed=seed)
    u = random_input(batch, 3, length, seed=seed + 1)
    options = dict.fromkeys(ENGINES[method].options, knob)
    engine = make_engine(h, method, batch_size=batch, **options)
    bounds = sorted({0, length, *(c for c in cuts if c < length)})
    singles = {s for s in stepped if s < length}
    outputs = []
    for start, stop in itertools.pairwise(bounds):
        t = start
        while t < stop:
            if t in singles:
                outputs.append(engine.step(u[..., t])[..., None])
                t += 1
            else:
                end = min([stop, *(s for s in singles if s > t)])
                outputs.append(engine.extend(u[..., t:end]))
                t = end
    assert engine.position == length
    y = torch.cat(outputs, dim=-1)
    assert rel_err(y, reference_conv(u.numpy(), h.numpy())) < 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_feedback_after_a_chunked_prompt(method):
    """A prompt in three chunks, then steps whose inputs are the last outputs."""
    length, channels = 60, 4
    h = decaying_filter(channels, length, seed=7)
    u = random_input(1, channels, 20, seed=8)
    engine = make_engine(h, method)
    ys = [engine.extend(u[..., :5]), engine.extend(u[..., 5:6]), engine.extend(u[..., 6:20])]
    inputs = [u]
    while engine.position < length:
        u_t = torch.tanh(ys[-1][..., -1])
        inputs.append(u_t[..., None])
        ys.append(engine.step(u_t)[..., None])
    expected = reference_conv(torch.cat(inputs, dim=-1).numpy(), h.numpy())
    assert rel_err(torch.cat(ys, dim=-1), expected) < 1e-10


def test_extend_checks_before_it_changes_anything():
    engine = make_engine(decaying_filter(2, 10), "continuous")
    engine.prefill(random_input(1, 2, 4))
    with pytest.raises(RuntimeError, match="cannot extend by 7 past max_len=10"):
        engine.extend(random_input(1, 2, 7))
    with pytest.raises(ValueError, match=r"u must have shape \(batch_size, channels, n\)"):
        engine.extend(random_input(1, 3, 2))
    assert engine.position == 4
