"""Every engine's traced step (fixed-shape, for torch.compile) with the work its positions
schedule returned by ``advance`` and run batched (:func:`run_scheduled`): against the float64
offline convolution, with prompts, in feedback loops, after eager steps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill.online import (
    ENGINES,
    METHODS,
    ContinuousConv,
    DeamortizedConv,
    deamortized,
    make_engine,
    run_scheduled,
)
from futurefill.online.continuous import TileEnd
from reference import (
    decaying_filter,
    random_input,
    reference_conv,
    reference_feedback,
    rel_err,
)


def run_traced(engines, inputs, prompt_len):
    """Prefill, then traced steps with the tile ends of all engines batched; outputs per engine."""
    outputs = [
        [e.prefill(u[..., :prompt_len])] if prompt_len else []
        for e, u in zip(engines, inputs, strict=True)
    ]
    for e in engines:
        e.prepare_traced()
    for t in range(prompt_len, inputs[0].shape[-1]):
        for e, u, out in zip(engines, inputs, outputs, strict=True):
            out.append(e.step_traced(u[..., t].contiguous()).unsqueeze(-1))
        run_scheduled([e.advance() for e in engines])
    return [torch.cat(out, dim=-1) for out in outputs]


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=12, deadline=None)
@given(
    length=st.integers(2, 90),
    prompt_frac=st.floats(0, 1),
    batch=st.integers(1, 3),
    knob=st.sampled_from([1, 2, 4, 8]),
    seed=st.integers(0, 2**16),
)
def test_batched_traced_steps_match_the_float64_reference(
    method, length, prompt_frac, batch, knob, seed
):
    """Three engines of one method (three layers), their scheduled work run batched."""
    channels = 3
    prompt_len = min(round(prompt_frac * length), length - 1)
    filters = [decaying_filter(channels, length, seed=seed + k) for k in range(3)]
    inputs = [random_input(batch, channels, length, seed=seed + 10 + k) for k in range(3)]
    options = dict.fromkeys(ENGINES[method].options, knob)
    engines = [make_engine(h, method, max_len=length, batch_size=batch, **options) for h in filters]
    for y, h, u in zip(run_traced(engines, inputs, prompt_len), filters, inputs, strict=True):
        assert rel_err(y, reference_conv(u.numpy(), h.numpy())) < 1e-10


def test_tile_ends_of_engines_at_one_step_run_as_one_fft_call(monkeypatch):
    """Cross-layer batching: the tile ends of three continuous engines at one local step are
    one group, one FFT call per level."""
    engines = [ContinuousConv(decaying_filter(3, 64, seed=k), tile_len=4) for k in range(3)]
    batches = []
    run_batch = TileEnd.run_batch.__func__
    monkeypatch.setattr(
        TileEnd,
        "run_batch",
        classmethod(lambda cls, w: (batches.append(len(w)), run_batch(cls, w))),
    )
    for engine in engines:
        engine.prepare_traced()
    for _ in range(16):
        for engine in engines:
            engine.step_traced(torch.ones(1, 3, dtype=torch.float64))
        run_scheduled([e.advance() for e in engines])
    assert batches == [3, 3, 3, 3]


@settings(max_examples=15, deadline=None)
@given(
    length=st.integers(2, 90),
    prompt_frac=st.floats(0, 1),
    batch=st.integers(1, 3),
    tile_len=st.sampled_from([1, 2, 4]),
    points=st.sampled_from([8, 10**6]),
    seed=st.integers(0, 2**16),
)
def test_deamortized_traced_steps_match_the_float64_reference(
    length, prompt_frac, batch, tile_len, points, seed
):
    """Every job queued for the worker (four-step slices with ``points`` 8), paced and joined
    from :meth:`advance`, which never defers a tile's end."""
    channels = 3
    prompt_len = min(round(prompt_frac * length), length - 1)
    h = decaying_filter(channels, length, seed=seed)
    u = random_input(batch, channels, length, seed=seed + 10)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deamortized, "SMALL_JOB_POINTS", 0)
        patch.setattr(deamortized, "SLICE_POINTS", points)
        engine = DeamortizedConv(h, max_len=length, batch_size=batch, tile_len=tile_len)
        outputs = [engine.prefill(u[..., :prompt_len])] if prompt_len else []
        engine.prepare_traced()
        for t in range(prompt_len, length):
            outputs.append(engine.step_traced(u[..., t].contiguous()).unsqueeze(-1))
            run_scheduled([engine.advance()])
    y = torch.cat(outputs, dim=-1)
    assert rel_err(y, reference_conv(u.numpy(), h.numpy())) < 1e-10


@pytest.mark.parametrize("small_job_points", [0, deamortized.SMALL_JOB_POINTS])
def test_deamortized_feedback_loop_through_traced_steps_after_eager_ones(
    device, small_job_points, monkeypatch
):
    """u[t + 1] = tanh(y[t]); a 1-token prompt, eager steps into mid-tile, then traced ones.
    With ``small_job_points`` 0 every job is queued (on CUDA: on the side stream)."""
    monkeypatch.setattr(deamortized, "SMALL_JOB_POINTS", small_job_points)
    length, channels = 70, 4
    h = decaying_filter(channels, length, seed=3)
    u0 = torch.ones(1, channels, dtype=torch.float64)
    _, y_ref = reference_feedback(u0.numpy(), h.numpy(), length)
    engine = DeamortizedConv(h.to(device), max_len=length, tile_len=4)
    ys = [engine.prefill(u0.to(device).unsqueeze(-1))[..., 0]]
    for _ in range(5):
        ys.append(engine.step(torch.tanh(ys[-1])))
    engine.prepare_traced()
    while engine.position < length:
        ys.append(engine.step_traced(torch.tanh(ys[-1])).clone())
        run_scheduled([engine.advance()])
    assert rel_err(torch.stack(ys, dim=-1), y_ref) < 1e-10


def test_feedback_loop_through_traced_steps(device):
    """u[t + 1] = tanh(y[t]) for two engines of one 'model', tile ends batched."""
    length, channels = 70, 4
    filters = [decaying_filter(channels, length, seed=k) for k in range(2)]
    engines = [ContinuousConv(h.to(device), max_len=length, tile_len=4) for h in filters]
    one = torch.ones(1, channels, 1, dtype=torch.float64, device=device)
    first = engines[0].prefill(one)
    second = engines[1].prefill(torch.tanh(first))
    for e in engines:
        e.prepare_traced()
    u = [one, torch.tanh(first)]
    ys = [first, second]
    for _ in range(length - 1):
        a = engines[0].step_traced(torch.tanh(ys[1][..., -1]))
        b = engines[1].step_traced(torch.tanh(a))
        u[0] = torch.cat([u[0], torch.tanh(ys[1][..., -1:])], dim=-1)
        u[1] = torch.cat([u[1], torch.tanh(a).unsqueeze(-1)], dim=-1)
        ys = [torch.cat([ys[0], a.unsqueeze(-1)], -1), torch.cat([ys[1], b.unsqueeze(-1)], -1)]
        run_scheduled([e.advance() for e in engines])
    for y, h, inputs in zip(ys, filters, u, strict=True):
        assert rel_err(y, reference_conv(inputs.cpu().numpy(), h.numpy())) < 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_half_precision_engines_have_no_traced_step(method):
    engine = make_engine(torch.randn(2, 8, dtype=torch.bfloat16), method, max_len=8)
    with pytest.raises(ValueError, match="no compiled step in bfloat16"):
        engine.prepare_traced()


@pytest.mark.parametrize("cls", [ContinuousConv, DeamortizedConv])
def test_preparing_the_traced_step_allocates_nothing(cls):
    """The traced push gathers the filter by lag: no table of shifted filters (it was
    b0 x window x channels, 8-32 MiB for a 4-layer model of width 128)."""
    engine = cls(decaying_filter(16, 256), batch_size=2, tile_len=8)
    engine.prefill(random_input(2, 16, 5))
    before = engine.nbytes
    engine.prepare_traced()
    assert engine.nbytes == before


def test_rows_at_their_own_positions_share_a_levels_fft_call(monkeypatch):
    """Two engines 8 steps apart (a batch's rows at their own positions): when one ends its
    4th input and the other its 12th, both end a block of 4, and one FFT call serves both."""
    ahead, behind = (ContinuousConv(decaying_filter(3, 64, seed=k), tile_len=4) for k in (1, 2))
    u = random_input(1, 3, 64, seed=4)
    for t in range(8):
        ahead.step(u[..., t])
    groups = []
    run_batch = TileEnd.run_batch.__func__

    def counted(cls, works):
        groups.append(sorted(w.seen for w in works))
        run_batch(cls, works)

    monkeypatch.setattr(TileEnd, "run_batch", classmethod(counted))
    outputs = {id(ahead): [], id(behind): []}
    for engine in (ahead, behind):
        engine.prepare_traced()
    for t in range(4):
        for engine, at in ((ahead, 8 + t), (behind, t)):
            outputs[id(engine)].append(engine.step_traced(u[..., at]))
        run_scheduled([ahead.advance(), behind.advance()])
    assert groups == [[4, 12]]
    expected = reference_conv(u.numpy(), behind.h.numpy())[..., :4]
    assert rel_err(torch.stack(outputs[id(behind)], dim=-1), expected) < 1e-10
