"""Every mixer decodes, token by token with every engine, exactly what its FFT forward computes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill import METHODS
from futurefill.layers import STU, Hyena, LongConv, Mixer, MixerCache
from reference import rel_err

D, MAX_LEN = 8, 48
LAYERS = {
    "longconv": lambda: LongConv(D, MAX_LEN),
    "stu": lambda: STU(D, MAX_LEN, 6, tensordot=False),
    "stu_tensordot": lambda: STU(D, MAX_LEN, 6, tensordot=True),
    "hyena": lambda: Hyena(D, MAX_LEN, 2),
    "hyena_order3": lambda: Hyena(D, MAX_LEN, 3, short_kernel=4),
    "hyena_order1": lambda: Hyena(D, MAX_LEN, 1, short_kernel=1),
}
# Engine options from degenerate tiles/epochs (every code path) to the defaults.
OPTIONS = {
    "naive": [{}],
    "epoched": [{"epoch_len": 1}, {"epoch_len": 5}, {}],
    "continuous": [{"tile_len": 1}, {"tile_len": 4}, {}],
}
CASES = [(method, opts) for method in METHODS for opts in OPTIONS[method]]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def make_layer(name: str, dtype: torch.dtype, seed: int = 0) -> Mixer:
    torch.manual_seed(seed)
    return LAYERS[name]().to(dtype)


def decode(layer: Mixer, x: torch.Tensor, prompt_len: int, cache: MixerCache) -> torch.Tensor:
    """Prefill ``prompt_len`` positions (if any), step through the rest: (B, T, D)."""
    outputs = []
    if prompt_len:
        outputs.append(layer.prefill(x[:, :prompt_len], cache))
    for t in range(prompt_len, x.shape[1]):
        outputs.append(layer.step(x[:, t], cache).unsqueeze(1))
    return torch.cat(outputs, dim=1)


DEFAULT_CASES = [(method, {}) for method in METHODS]


@pytest.mark.parametrize(
    ("dtype", "method", "opts"),
    [(torch.float64, m, o) for m, o in CASES] + [(torch.float32, m, o) for m, o in DEFAULT_CASES],
    ids=[f"f64-{m}{o}" for m, o in CASES] + [f"f32-{m}" for m, _ in DEFAULT_CASES],
)
@pytest.mark.parametrize("name", LAYERS)
def test_decode_matches_forward(name, dtype, method, opts):
    layer = make_layer(name, dtype)
    length = 21
    x = torch.randn(2, length, D, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        expected = layer(x)
    for prompt_len in (0, 1, 9, length):
        cache = layer.setup_cache(2, length, method, **opts)
        y = decode(layer, x, prompt_len, cache)
        assert y.dtype == dtype
        assert cache.position == length
        assert rel_err(y, expected) < TOL[dtype], (prompt_len, rel_err(y, expected))


@settings(max_examples=20)
@given(
    name=st.sampled_from(sorted(LAYERS)),
    method=st.sampled_from(METHODS),
    length=st.integers(1, 30),
    prompt_frac=st.floats(0, 1),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_decode_matches_forward_random(name, method, length, prompt_frac, batch, seed):
    layer = make_layer(name, torch.float64, seed)
    x = torch.randn(
        batch, length, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        expected = layer(x)
    prompt_len = round(prompt_frac * length)
    y = decode(layer, x, prompt_len, layer.setup_cache(batch, MAX_LEN, method))
    assert rel_err(y, expected) < 1e-9


@pytest.mark.parametrize("name", LAYERS)
def test_reset_starts_a_new_sequence(name):
    layer = make_layer(name, torch.float64)
    x1, x2 = torch.randn(2, 2, 20, D, dtype=torch.float64)
    cache = layer.setup_cache(2, 20)
    decode(layer, x1, 7, cache)
    cache.reset()
    assert cache.position == 0
    with torch.no_grad():
        expected = layer(x2)
    for prompt_len in (0, 5):
        cache.reset()
        assert rel_err(decode(layer, x2, prompt_len, cache), expected) < 1e-9


def test_cache_holds_one_engine_per_long_filter_bank():
    assert len(make_layer("longconv", torch.float64).setup_cache(1).engines) == 1
    assert len(make_layer("stu_tensordot", torch.float64).setup_cache(1).engines) == 1
    stu = make_layer("stu", torch.float64).setup_cache(3)
    # The full STU form shares its bank of 2k = 12 filters: channels folded into the batch.
    assert [(e.batch_size, e.channels) for e in stu.engines] == [(3 * D, 2 * 6)]
    hyena = make_layer("hyena_order3", torch.float64).setup_cache(2, 10)
    assert len(hyena.engines) == 3
    assert all(e.channels == D and e.max_len == 10 for e in hyena.engines)
    assert hyena.short is not None and hyena.short.inputs.shape == (3, 2, 4 * D)
    assert hyena.nbytes > sum(e.nbytes for e in hyena.engines)


def test_full_stu_holds_its_filter_spectra_once():
    """The continuous engine's level spectra are (2k, ...), not (d_model * 2k, ...): its bytes
    grow with d_model only through the per-row buffers."""
    layer = make_layer("stu", torch.float64)
    (engine,) = layer.setup_cache(1, method="continuous", tile_len=2).engines
    assert all(spec.shape[0] == 2 * 6 for spec in engine._spectra.values())


def test_engines_hold_a_snapshot_of_the_filters():
    layer = make_layer("longconv", torch.float64)
    cache = layer.setup_cache(1, method="continuous")
    before = cache.engines[0].h.clone()
    with torch.no_grad():
        layer.filters.mul_(2.0)
    assert torch.equal(cache.engines[0].h, before)


@pytest.mark.parametrize("name", LAYERS)
def test_decoding_does_not_build_autograd_graphs(name):
    layer = make_layer(name, torch.float64)
    cache = layer.setup_cache(1, 4)
    x = torch.randn(1, 4, D, dtype=torch.float64, requires_grad=True)
    assert not layer.prefill(x[:, :2], cache).requires_grad
    assert not layer.step(x[:, 2], cache).requires_grad


def test_forward_is_differentiable():
    for name in LAYERS:
        layer = make_layer(name, torch.float64)
        layer(torch.randn(2, 10, D, dtype=torch.float64)).square().sum().backward()
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name


def test_setup_cache_errors():
    layer = make_layer("longconv", torch.float64)
    with pytest.raises(ValueError, match=r"max_len must be in \[1, 48\]"):
        layer.setup_cache(1, MAX_LEN + 1)
    with pytest.raises(ValueError, match="unknown method"):
        layer.setup_cache(1, 10, "fast")
    with pytest.raises(ValueError, match="tile_len applies"):
        layer.setup_cache(1, 10, "naive", tile_len=4)


def test_forward_input_errors():
    layer = make_layer("stu", torch.float64)
    with pytest.raises(ValueError, match="exceeds the filter length"):
        layer(torch.zeros(1, MAX_LEN + 1, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="d_model=8"):
        layer(torch.zeros(1, 4, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="d_model must be >= 1"):
        LongConv(0, 4)


def test_step_past_max_len_raises():
    layer = make_layer("hyena", torch.float64)
    cache = layer.setup_cache(1, 3)
    layer.prefill(torch.randn(1, 3, D, dtype=torch.float64), cache)
    with pytest.raises(RuntimeError, match="max_len"):
        layer.step(torch.randn(1, D, dtype=torch.float64), cache)
