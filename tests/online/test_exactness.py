"""Every online engine reproduces the offline convolution, step by step, to rounding error."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from futurefill import METHODS, OnlineConv
from reference import decaying_filter, random_input, reference_conv, reference_feedback, rel_err

LENGTHS = [1, 2, 3, 7, 64, 100, 257]
# Options of each method's tuning knob, from degenerate to default (None).
OPTIONS = {
    "naive": [{}],
    "epoched": [{"epoch_len": 1}, {"epoch_len": 2}, {"epoch_len": 5}, {}],
    "continuous": [{"tile_len": 1}, {"tile_len": 2}, {"tile_len": 8}, {}],
    "deamortized": [{"tile_len": 1}, {"tile_len": 2}, {"tile_len": 8}, {}],
}
CASES = [(method, opts) for method in METHODS for opts in OPTIONS[method]]
CASE_IDS = [f"{m}-{next(iter(o.items()), ('default', ''))}" for m, o in CASES]


def run_online(conv: OnlineConv, u: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Prefill ``prompt_len`` inputs (if any), step through the rest; outputs (B, D, L)."""
    outputs = []
    if prompt_len:
        outputs.append(conv.prefill(u[..., :prompt_len]))
    for t in range(prompt_len, u.shape[-1]):
        outputs.append(conv.step(u[..., t]).unsqueeze(-1))
    return torch.cat(outputs, dim=-1)


@pytest.mark.parametrize(("method", "opts"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("length", LENGTHS)
def test_matches_reference_batch3_channels5(method, opts, length, device):
    h = decaying_filter(5, length + 3)
    u = random_input(3, 5, length)
    ref = reference_conv(u, h)
    h, u = h.to(device), u.to(device)
    for prompt_len in sorted({0, 1, length // 2, length}):
        conv = OnlineConv(h, method=method, max_len=length, batch_size=3, **opts)
        y = run_online(conv, u, prompt_len)
        assert conv.position == length
        assert rel_err(y, ref) < 1e-10, (prompt_len, rel_err(y, ref))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("length", [1, 2, 3, 7, 100])
def test_single_sequence_single_channel(method, length):
    h = decaying_filter(1, length)
    u = random_input(1, 1, length)
    y = run_online(OnlineConv(h, method=method), u, 0)
    assert rel_err(y, reference_conv(u, h)) < 1e-10


@given(
    method=st.sampled_from(METHODS),
    length=st.integers(1, 300),
    prompt_frac=st.floats(0, 1),
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    knob=st.sampled_from([None, 1, 2, 3, 4, 16, 32]),
    slack=st.integers(0, 9),
    seed=st.integers(0, 10_000),
)
def test_random_cases(method, length, prompt_frac, batch, channels, knob, slack, seed):
    prompt_len = int(prompt_frac * length)
    opts = {}
    if method == "epoched" and knob is not None:
        opts["epoch_len"] = knob
    if method == "continuous" and knob is not None and knob & (knob - 1) == 0:
        opts["tile_len"] = knob
    h = decaying_filter(channels, length + slack, seed=seed)
    u = random_input(batch, channels, length, seed=seed + 1)
    conv = OnlineConv(h, method=method, max_len=length, batch_size=batch, **opts)
    assert rel_err(run_online(conv, u, prompt_len), reference_conv(u, h)) < 1e-10


@pytest.mark.parametrize(("method", "opts"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("prompt_len", [0, 1, 37])
@pytest.mark.parametrize("into_buffer", [False, True], ids=["returned", "out"])
def test_feedback_loop(method, opts, prompt_len, into_buffer, device):
    """u[t+1] = tanh(y[t]): each input depends on the output just produced. With ``into_buffer``
    every output lands in one caller buffer (``step(u_t, out=y)``), read for the next input and
    overwritten by the next step, and the input buffer is reused too."""
    length, batch, channels = 150, 2, 3
    h = decaying_filter(channels, length)
    prompt = random_input(batch, channels, prompt_len)[..., :prompt_len] if prompt_len else None
    u0 = np.linspace(-1, 1, batch * channels).reshape(batch, channels)
    _ref_u, ref_y = reference_feedback(
        u0, h.numpy(), length, None if prompt is None else prompt.numpy()
    )
    conv = OnlineConv(h.to(device), method=method, batch_size=batch, **opts)
    outputs = []
    if prompt is not None:
        outputs.append(conv.prefill(prompt.to(device)))
        u_t = torch.tanh(outputs[-1][..., -1])
    else:
        u_t = torch.from_numpy(u0.copy()).to(device)
    y_buffer = torch.empty(batch, channels, dtype=torch.float64, device=device)
    while conv.position < length:
        if into_buffer:
            assert conv.step(u_t, out=y_buffer) is y_buffer
            outputs.append(y_buffer.clone().unsqueeze(-1))
            torch.tanh(y_buffer, out=u_t)
        else:
            y_t = conv.step(u_t)
            outputs.append(y_t.unsqueeze(-1))
            u_t = torch.tanh(y_t)
    assert rel_err(torch.cat(outputs, -1), ref_y) < 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_out_buffer_in_half_precision(method):
    h = decaying_filter(3, 40).to(torch.bfloat16)
    u = random_input(2, 3, 40).to(torch.bfloat16)
    conv = OnlineConv(h, method=method, batch_size=2)
    out = torch.empty(2, 3, dtype=torch.bfloat16)
    expected = OnlineConv(h, method=method, batch_size=2)
    for t in range(40):
        assert conv.step(u[..., t], out=out) is out
        assert torch.equal(out, expected.step(u[..., t]))


@pytest.mark.parametrize(("method", "opts"), CASES, ids=CASE_IDS)
def test_float32_within_output_scale(method, opts, device):
    length = 257
    h = decaying_filter(4, length)
    u = random_input(2, 4, length)
    ref = reference_conv(u, h)
    for prompt_len in (0, 1, 128):
        conv = OnlineConv(h.float().to(device), method=method, batch_size=2, **opts)
        y = run_online(conv, u.float().to(device), prompt_len)
        assert y.dtype == torch.float32
        assert rel_err(y, ref) < 1e-4


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_computed_in_float32(method, half, device):
    length = 100
    h = decaying_filter(3, length).to(half)
    u = random_input(2, 3, length).to(half)
    ref = reference_conv(u.double(), h.double())  # exact for the rounded inputs
    y = run_online(OnlineConv(h.to(device), method=method, batch_size=2), u.to(device), 10)
    assert y.dtype == half
    # Only the final rounding to half precision separates the result from the reference.
    eps = torch.finfo(half).eps
    assert rel_err(y.double(), ref) < 4 * eps


@pytest.mark.parametrize("method", METHODS)
def test_reset_restarts_and_keeps_returned_outputs(method):
    h = decaying_filter(2, 40)
    u = random_input(1, 2, 40)
    conv = OnlineConv(h, method=method)
    first = [conv.step(u[..., t]) for t in range(40)]
    kept = torch.stack(first, -1).clone()
    conv.reset()
    assert conv.position == 0
    second = run_online(conv, u, 5)
    assert rel_err(second, reference_conv(u, h)) < 1e-10
    assert torch.equal(torch.stack(first, -1), kept)  # returned outputs never rewritten


@pytest.mark.parametrize("method", METHODS)
def test_max_len_shorter_than_filter(method):
    h = decaying_filter(2, 500)
    u = random_input(2, 2, 77)
    conv = OnlineConv(h, method=method, max_len=77, batch_size=2)
    assert rel_err(run_online(conv, u, 3), reference_conv(u, h)) < 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_inputs_that_require_grad_are_decoded_without_autograd(method):
    h = decaying_filter(2, 30)
    u = random_input(1, 2, 30).requires_grad_(True)
    conv = OnlineConv(h, method=method)
    y = run_online(conv, u, 4)
    assert not y.requires_grad
    assert rel_err(y.detach(), reference_conv(u.detach(), h)) < 1e-10
