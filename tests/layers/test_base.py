"""Every mixer decodes, inside a decoding session with every engine, exactly what its FFT forward
computes: the layers have one forward, which is also their decode path (every row, and rows at
their own positions)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill import METHODS, decoding
from futurefill.layers import STU, Hyena, HyenaConfig, LongConvMixer
from futurefill.nn.conv import ConvState
from reference import decode_chunks, rel_err

D, MAX_LEN = 8, 48
LAYERS = {
    "longconv": lambda: LongConvMixer(D, MAX_LEN),
    "stu": lambda: STU(D, MAX_LEN, 6, tensordot=False),
    "stu_tensordot": lambda: STU(D, MAX_LEN, 6, tensordot=True),
    "hyena": lambda: Hyena(HyenaConfig(D, MAX_LEN)),
    "hyena_order3": lambda: Hyena(HyenaConfig(D, MAX_LEN, order=3, short_filter_order=4)),
    "hyena_order4": lambda: Hyena(
        HyenaConfig(D, MAX_LEN, order=4, short_filter_order=1, filter_layout="channel-major")
    ),
}
# Engine options from degenerate tiles/epochs (every code path) to the defaults.
OPTIONS = {
    "naive": [{}],
    "epoched": [{"epoch_len": 1}, {"epoch_len": 5}, {}],
    "continuous": [{"tile_len": 1}, {"tile_len": 4}, {}],
    "deamortized": [{"tile_len": 1}, {"tile_len": 4}, {}],
}
CASES = [(method, opts) for method in METHODS for opts in OPTIONS[method]]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def make_layer(name: str, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return LAYERS[name]().to(dtype)


def engines(session) -> list:
    return [s.engine for s in session.states.values() if isinstance(s, ConvState)]


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
    for prompt_len, chunk in ((0, 1), (1, 1), (9, 1), (length, 1), (0, 5), (4, length)):
        y, _ = decode_chunks(layer, x, prompt_len, method, chunk=chunk, **opts)
        assert y.dtype == dtype
        assert rel_err(y, expected) < TOL[dtype], (prompt_len, chunk, rel_err(y, expected))


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
    y, _ = decode_chunks(layer, x, prompt_len, method, max_len=MAX_LEN)
    assert rel_err(y, expected) < 1e-9


@pytest.mark.parametrize("name", LAYERS)
def test_reset_starts_a_new_sequence(name):
    layer = make_layer(name, torch.float64)
    x1, x2 = torch.randn(2, 2, 20, D, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x2)
        with decoding(layer, batch_size=2, max_len=20) as session:
            session.feed(x1[:, :7])
            session.feed(x1[:, 7:8])
            for prompt_len in (0, 5):
                session.reset()
                assert session.positions.tolist() == [0, 0]
                y = [session.feed(x2[:, :prompt_len])] if prompt_len else []
                y += [session.feed(x2[:, t : t + 1]) for t in range(prompt_len, 20)]
                assert rel_err(torch.cat(y, dim=1), expected) < 1e-9


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", LAYERS)
def test_rows_at_their_own_positions(name, method):
    """Rows started with prompts of different lengths (1 included) and at different times,
    stepped and fed chunks together at different positions, one packed chunk (steps of two rows
    and a piece of the third), a row reset and restarted while the others go on: each row's
    outputs are the forward of its own inputs."""
    layer = make_layer(name, torch.float64)
    x = torch.randn(3, 20, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    new = torch.randn(1, 20, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, expected_new = layer(x), layer(new)
        with decoding(layer, batch_size=3, max_len=20, method=method) as session:
            out: dict[int, list[torch.Tensor]] = {0: [], 1: [], 2: []}
            out[1].append(session.feed(x[1:2, :6], rows=[1])[0])
            out[0].append(session.feed(x[:1, :1], rows=[0])[0])  # a 1-token prompt
            y = session.feed(torch.stack([x[0, 1:4], x[1, 6:9]]), rows=[0, 1])  # at 1 and 6
            out[0].append(y[0])
            out[1].append(y[1])
            packed = torch.cat([x[1, 9:10], x[0, 4:5], x[2, :5]])[None]  # steps; row 2's prompt
            y = session.feed_packed(packed, rows=[1, 0], piece_row=2)[0]
            out[1].append(y[:1])
            out[0].append(y[1:2])
            out[2].append(y[2:])
            for t in range(3):  # every row on, at 5, 10 and 5
                y = session.feed(torch.stack([x[r, [5, 10, 5][r] + t] for r in range(3)])[:, None])
                for r in range(3):
                    out[r].append(y[r])
            assert session.positions.tolist() == [8, 13, 8]
            session.reset_rows([1])
            out[1] = [session.feed(new[:, :4], rows=[1])[0]]
            y = session.feed(torch.stack([new[0, 4:9], x[2, 8:13]]), rows=[1, 2])  # at 4 and 8
            out[1].append(y[0])
            out[2].append(y[1])
            assert session.positions.tolist() == [8, 9, 13]
    for row, expect in ((0, expected[0, :8]), (1, expected_new[0, :9]), (2, expected[2, :13])):
        assert rel_err(torch.cat(out[row]), expect) < 1e-9, row


def test_session_holds_one_engine_per_long_convolution():
    x = torch.randn(3, 4, D, dtype=torch.float64)
    for name, count in (
        ("longconv", 1),
        ("stu_tensordot", 1),
        ("stu", 1),
        ("hyena_order3", 2),
        ("hyena_order4", 3),
    ):
        layer = make_layer(name, torch.float64)
        with torch.no_grad(), decoding(layer, batch_size=3, max_len=10) as session:
            session.feed(x)
            assert len(engines(session)) == count, name
            assert all(e.max_len == 10 for e in engines(session))
    stu = make_layer("stu", torch.float64)
    with torch.no_grad(), decoding(stu, batch_size=3) as session:
        session.feed(x)
        # The full STU form shares its bank of 2k = 12 filters: channels folded into the batch.
        assert [(e.batch_size, e.channels) for e in engines(session)] == [(3 * D, 2 * 6)]
    hyena = make_layer("hyena_order3", torch.float64)
    with torch.no_grad(), decoding(hyena, batch_size=2, max_len=10) as session:
        session.feed(x[:2])
        assert session.states["short_filter"].history.shape == (2, 3, 4 * D)
        assert session.nbytes > sum(e.nbytes for e in engines(session))


def test_full_stu_holds_its_filter_spectra_once():
    """The continuous engine's level spectra are (2k, ...), not (d_model * 2k, ...): its bytes
    grow with d_model only through the per-row buffers."""
    layer = make_layer("stu", torch.float64)
    with torch.no_grad(), decoding(layer, batch_size=1, tile_len=2) as session:
        session.feed(torch.randn(1, 3, D, dtype=torch.float64))
        (engine,) = engines(session)
    assert all(spec.shape[0] == 2 * 6 for spec in engine._spectra.values())


def test_engines_hold_a_snapshot_of_the_filters():
    layer = make_layer("longconv", torch.float64)
    x = torch.randn(1, 6, D, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x)
        with decoding(layer, batch_size=1) as session:
            first = session.feed(x[:, :3])
            layer.conv.weight.mul_(2.0)
            rest = [session.feed(x[:, t : t + 1]) for t in range(3, 6)]
            assert rel_err(torch.cat([first, *rest], dim=1), expected) < 1e-9
            session.reset()
            assert torch.equal(session.feed(x[:, :3]), first)  # this session keeps its snapshot
        assert not torch.equal(layer(x[:, :3]), first)  # the forward sees the new weights


@pytest.mark.parametrize("name", LAYERS)
def test_decoding_does_not_build_autograd_graphs(name):
    layer = make_layer(name, torch.float64)
    x = torch.randn(1, 4, D, dtype=torch.float64, requires_grad=True)
    with decoding(layer, batch_size=1, max_len=4) as session:
        prompt_out = session.feed(x[:, :2])
        step_out = session.feed(x[:, 2:3])
    # The engines hold detached state; only the position-wise layers around them see x's graph.
    assert layer(x).requires_grad
    assert prompt_out.shape == (1, 2, D) and step_out.shape == (1, 1, D)


def test_forward_is_differentiable():
    for name in LAYERS:
        layer = make_layer(name, torch.float64)
        layer(torch.randn(2, 10, D, dtype=torch.float64)).square().sum().backward()
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name


def test_session_errors():
    layer = make_layer("longconv", torch.float64)
    with pytest.raises(ValueError, match="exceeds the model's max_len 48"):
        decoding(layer, batch_size=1, max_len=MAX_LEN + 1)
    with pytest.raises(ValueError, match="unknown method"):
        decoding(layer, batch_size=1, method="fast")
    with pytest.raises(ValueError, match="tile_len applies"):
        decoding(layer, batch_size=1, method="naive", tile_len=4)


def test_forward_input_errors():
    layer = make_layer("stu", torch.float64)
    with pytest.raises(ValueError, match="exceeds the filter length"):
        layer(torch.zeros(1, MAX_LEN + 1, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="channels=8"):
        layer(torch.zeros(1, 4, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="channels must be >= 1"):
        LongConvMixer(0, 4)


def test_step_past_max_len_raises():
    layer = make_layer("hyena", torch.float64)
    with torch.no_grad(), decoding(layer, batch_size=1, max_len=3) as session:
        session.feed(torch.randn(1, 3, D, dtype=torch.float64))
        with pytest.raises(ValueError, match="max_len=3"):
            session.feed(torch.randn(1, 1, D, dtype=torch.float64))
        assert session.positions.tolist() == [3]
