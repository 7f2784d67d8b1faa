"""HyenaLM: its operator against a direct float64 reference, and decoding = forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill import METHODS, generate
from futurefill.layers.hyena import FILTER_LAYOUTS
from futurefill.pretrained import HyenaLMConfig
from futurefill.testing import assert_decoding_matches_forward
from pretrained.checkpoints import random_hyena_lm
from reference import reference_conv, rel_err


def reference_operator(mixer, u: np.ndarray) -> np.ndarray:
    """The Hyena operator of the module docstring, written directly in numpy (float64):
    short filter as an explicit sum over taps, long convolutions with numpy.convolve, the filter
    split into orders by explicit index arithmetic."""
    c = mixer.filter_fn.config
    d, n = c.d_model, c.order
    p = {k: v.detach().numpy().astype(np.float64) for k, v in mixer.state_dict().items()}
    batch, length, _ = u.shape
    z = u @ p["in_proj.weight"].T + p["in_proj.bias"]  # (B, L, (N+1) d)
    w = p["short_filter.weight"]  # (C, K), tap j multiplies the input j steps back
    short = np.tile(p["short_filter.bias"], (batch, length, 1))
    for j in range(w.shape[1]):
        short[:, j:] += w[:, j] * z[:, : length - j]
    streams = [short[..., i * d : (i + 1) * d] for i in range(n + 1)]
    x, v = streams[:n], streams[n]
    h_all = mixer.filter_fn(length).detach().numpy().astype(np.float64)  # (L, (N-1) d)
    bias_all = p["filter_fn.bias"]
    for o, x_i in enumerate(reversed(x[1:])):
        if c.filter_layout == "order-major":
            index = [o * d + ch for ch in range(d)]
        else:
            index = [ch * (n - 1) + o for ch in range(d)]
        gated = v * x_i
        conv = reference_conv(gated.transpose(0, 2, 1), h_all[:, index].T).transpose(0, 2, 1)
        v = conv + (bias_all[index] if c.use_bias else 0.0) * gated
    return (v * x[0]) @ p["out_proj.weight"].T + p["out_proj.bias"]


@pytest.mark.parametrize("layout", FILTER_LAYOUTS)
@pytest.mark.parametrize("order", [2, 3, 4])
def test_operator_matches_a_direct_float64_reference(order, layout):
    model = random_hyena_lm(order=order, filter_layout=layout, short_filter_order=4)
    mixer = model.backbone.layers[1].mixer
    u = torch.randn(3, 37, model.config.d_model, dtype=torch.float64)
    with torch.no_grad():
        y = mixer(u)
    assert rel_err(y, reference_operator(mixer, u.numpy())) < 1e-10


def test_filter_taps_do_not_depend_on_the_input_length():
    model = random_hyena_lm()
    f = model.backbone.layers[0].mixer.filter_fn
    with torch.no_grad():
        full = f(48)  # the same taps on a shorter grid, to float64 rounding (another BLAS may
        # round a product of 10 rows differently from one of 48)
        torch.testing.assert_close(
            f(10), full[:10], rtol=1e-12, atol=1e-12 * float(full.abs().max())
        )


@settings(max_examples=10, deadline=None)
@given(
    order=st.integers(2, 4),
    layout=st.sampled_from(FILTER_LAYOUTS),
    inner=st.integers(0, 2),
    modulate=st.booleans(),
    batch=st.integers(1, 3),
    length=st.integers(2, 40),
    seed=st.integers(0, 2**16),
)
def test_decoding_matches_forward_random(order, layout, inner, modulate, batch, length, seed):
    model = random_hyena_lm(
        seed, order=order, filter_layout=layout, num_inner_mlps=inner, modulate=modulate
    )
    ids = torch.randint(0, 16, (batch, length), generator=torch.Generator().manual_seed(seed))
    assert_decoding_matches_forward(model, ids, prompt_lens=(0, 1, length // 2 + 1))


@pytest.mark.parametrize("method", METHODS)
def test_greedy_feedback_loop_matches_recomputing_the_forward(method):
    """Each next input is the last output's argmax: decoded tokens = a full forward per token."""
    model = random_hyena_lm(order=3)
    prompt = torch.randint(0, 16, (2, 7), generator=torch.Generator().manual_seed(3))
    ids = prompt
    with torch.no_grad():
        for _ in range(30):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    tokens = generate(model, prompt, max_new_tokens=30, method=method)
    assert torch.equal(tokens, ids[:, 7:])
    one_token = generate(model, prompt[:, :1], max_new_tokens=5, method=method)
    with torch.no_grad():
        expected = prompt[:, :1]
        for _ in range(5):
            expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(one_token, expected[:, 1:])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"order": 1}, "order must be an int >= 2"),
        ({"emb_dim": 2}, "emb_dim must be an odd int >= 3"),
        ({"filter_layout": "rows"}, "filter_layout must be one of"),
        ({"d_model": True}, "d_model must be an int >= 1"),
        ({"block_norm_eps": 0.0}, "block_norm_eps must be > 0"),
        ({"modulation_shift": float("nan")}, "modulation_shift must be a finite number"),
    ],
)
def test_config_errors(change, message):
    base = {"vocab_size": 8, "d_model": 4, "n_layers": 1, "d_inner": 8, "max_len": 16}
    with pytest.raises(ValueError, match=message):
        HyenaLMConfig(**{**base, **change})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_generation_gives_eager_tokens_and_logits(dtype):
    """generate(compile=True) on a HyenaLM (order 3, batch 2, a 1-token and a 9-token prompt):
    the compiled step (products of one token by the weights rewritten as multiply-and-sum on
    CPU) gives eager's tokens and logits."""
    model = random_hyena_lm(order=3, dtype=dtype)
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for prompt in (ids, ids[:, :1]):
        eager = generate(model, prompt, 20, method="continuous", return_logits=True)
        compiled = generate(model, prompt, 20, compile=True, return_logits=True)
        assert torch.equal(compiled.tokens, eager.tokens)
        assert rel_err(compiled.logits, eager.logits) < tol
