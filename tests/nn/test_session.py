"""futurefill.decoding: the life cycle of a session over a model, and its errors. Every error
leaves the model as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from futurefill import decoding
from futurefill.nn import LongConv, ShortConv, decoding_max_len

D = 4


class TwoConvs(nn.Module):
    """Two long convolutions of different lengths around a position-wise layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = LongConv(D, 30)
        self.mix = nn.Linear(D, D)
        self.second = LongConv(D, 20, skip=True)

    def forward(self, u):
        return self.second(self.mix(self.first(u)))


def model() -> TwoConvs:
    return TwoConvs().double()


def u(batch=2, length=10, seed=0, dtype=torch.float64):
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_max_len_defaults_to_the_shortest_filter():
    m = model()
    assert decoding_max_len(m) == 20
    with decoding(m, batch_size=1) as session:
        assert session.max_len == 20
    with pytest.raises(ValueError, match=r"exceeds the model's max_len 20 .*'second'"):
        decoding(m, batch_size=1, max_len=21)


def test_life_cycle():
    m = model()
    x = u()
    with torch.no_grad():
        expected = m(x)
        with decoding(m, batch_size=2, max_len=10, method="epoched") as session:
            assert session.position == 0 and session.nbytes == 0  # engines come with a chunk
            assert all(module.decoding for module in (m.first, m.second))
            y = torch.cat([m(x[:, :4]), m(x[:, 4:5]), m(x[:, 5:])], dim=1)
            assert session.position == 10 and session.nbytes > 0
            assert (y - expected).abs().max() < 1e-12
            session.reset()
            assert session.position == 0
            assert (m(x) - expected).abs().max() < 1e-12
    assert session.closed and "closed" in repr(session)
    assert not m.first.decoding
    with torch.no_grad():
        assert torch.equal(m(x), expected)  # an ordinary module again


def test_the_session_closes_when_its_block_raises():
    m = model()
    with pytest.raises(KeyError), decoding(m, batch_size=1):
        raise KeyError("user code")
    assert not m.first.decoding and not m.second.decoding


def test_one_session_at_a_time():
    m = model()
    with decoding(m, batch_size=1):
        with pytest.raises(RuntimeError, match="already in a decoding session"):
            decoding(m, batch_size=1)
    with decoding(m, batch_size=1):  # after the first closed
        pass


def test_errors_leave_the_session_where_it_was():
    m = model()
    with torch.no_grad(), decoding(m, batch_size=2, max_len=10) as session:
        m(u(length=6))
        with pytest.raises(ValueError, match="is for batch_size=2"):
            m(u(batch=3, length=1))
        with pytest.raises(ValueError, match="no room for 5 more"):
            m(u(length=5))
        with pytest.raises(ValueError, match=r"channels=4"):
            m(torch.zeros(2, 1, D + 1, dtype=torch.float64))
        assert session.position == 6
        assert all(state.position == 6 for state in session.states.values())
        m(u(length=4))
        assert session.position == 10


def test_a_cast_during_a_session_is_named_in_model_terms():
    m = model()
    with torch.no_grad(), decoding(m, batch_size=1) as session:
        m(u(batch=1, length=3))
        m.float()
        with pytest.raises(
            RuntimeError,
            match=r"'first' started this decoding session with "
            r"torch\.float64 inputs .* now gets torch\.float32",
        ):
            m(u(batch=1, length=1, dtype=torch.float32))
        assert session.position == 3


def test_argument_errors():
    m = model()
    with pytest.raises(TypeError, match=r"batch_size must be an int, got 2\.7"):
        decoding(m, batch_size=2.7)
    with pytest.raises(TypeError, match=r"max_len must be an int, got 3\.9"):
        decoding(m, batch_size=1, max_len=3.9)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        decoding(m, batch_size=0)
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        decoding(m, batch_size=1, method="fast")
    with pytest.raises(TypeError, match="unknown engine option 'tile'"):
        decoding(m, batch_size=1, tile=4)
    with pytest.raises(ValueError, match="tile_len must be a positive power of two"):
        decoding(m, batch_size=1, tile_len=3)
    with pytest.raises(ValueError, match="epoch_len must be >= 1"):
        decoding(m, batch_size=1, method="epoched", epoch_len=0)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        decoding(lambda ids: ids, batch_size=1)
    with pytest.raises(ValueError, match=r"has no futurefill\.nn modules"):
        decoding(nn.Sequential(nn.Linear(2, 2)), batch_size=1)
    with pytest.raises(ValueError, match="max_len is required"):
        decoding(ShortConv(3), batch_size=1)
    assert not m.first.decoding  # nothing was opened


def test_a_rejected_first_chunk_fixes_nothing():
    m = model()
    with torch.no_grad(), decoding(m, batch_size=2, max_len=10) as session:
        with pytest.raises(ValueError, match="is for batch_size=2"):
            m(u(batch=3, length=2, dtype=torch.float32).double())
        m.float()  # the session has seen no accepted chunk: float32 is still fine
        y = m(u(length=4, dtype=torch.float32))
        assert y.dtype == torch.float32 and session.position == 4


@pytest.mark.parametrize("method", ["naive", "continuous"])
def test_padding_is_zeros_for_every_module(method):
    """In ``session.padded(valid)`` the modules see zeros at the padding: a left-padded sequence
    gets the outputs it gets alone, whatever the padding held."""
    torch.manual_seed(0)
    model = nn.Sequential(ShortConv(3, 3), LongConv(3, 20, skip=True), ShortConv(3, 2)).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    valid = torch.arange(9) >= torch.tensor([[0], [4]])  # sequence 1: 4 positions of padding
    x_noise = x.clone()
    x_noise[1, :4] = 100.0
    with torch.no_grad():
        alone = model(x[1:, 4:])
        with decoding(model, batch_size=2, max_len=12, method=method) as session:
            with session.padded(valid):
                y = model(x_noise)
            step = model(x[:, :1])  # one more position: no padding any more
            assert session.valid is None
    assert torch.allclose(y[1, 4:], alone[0], rtol=0, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(y[0], model(x[:1])[0], rtol=0, atol=1e-12)
        full = model(torch.cat([x[1:, 4:], x[1:, :1]], dim=1))
    assert torch.allclose(step[1, 0], full[0, -1], rtol=0, atol=1e-12)


def test_padding_errors():
    model = nn.Sequential(ShortConv(3, 3), LongConv(3, 20))
    with decoding(model, batch_size=2, max_len=12) as session:
        with pytest.raises(TypeError, match="valid must be a 2-D bool tensor"):
            with session.padded(torch.ones(2, 4)):
                pass
        with pytest.raises(ValueError, match="valid has batch 3, the session 2"):
            with session.padded(torch.ones(3, 4, dtype=torch.bool)):
                pass
        with session.padded(torch.ones(2, 4, dtype=torch.bool)):
            with pytest.raises(ValueError, match=r"the padding mask is \(2, 4\) but the chunk"):
                model(torch.randn(2, 5, 3))
        assert session.valid is None and session.position == 0


class PositionsRecorder(torch.nn.Module):
    """A model that records what futurefill.nn.positions gives at every call."""

    def __init__(self):
        super().__init__()
        from futurefill.nn import LongConv

        self.conv, self.seen = LongConv(2, 32), []

    def forward(self, x):
        from futurefill.nn import positions

        self.seen.append(positions(x).tolist())
        return self.conv(x)


def test_positions_outside_in_lockstep_with_padding_and_with_independent_rows():
    from futurefill import decoding

    model = PositionsRecorder().double()
    x = torch.zeros(2, 3, 2, dtype=torch.float64)
    model(x)
    assert model.seen[-1] == [[0, 1, 2], [0, 1, 2]]
    with decoding(model, batch_size=2, max_len=10) as session:
        with session.padded(torch.tensor([[True, True, True], [False, True, True]])):
            model(x)
        model(x[:, :1])
    assert model.seen[-2:] == [[[0, 1, 2], [0, 0, 1]], [[3], [2]]]  # row 1 starts at its token
    with decoding(model, batch_size=3, max_len=10, independent_rows=True) as session:
        with session.selecting([2]):
            model(x[:1])
        with session.selecting([0, 2]):
            model(x[:, :1])
    assert model.seen[-2:] == [[[0, 1, 2]], [[0], [3]]]
    model(x)  # outside again
    assert model.seen[-1] == [[0, 1, 2], [0, 1, 2]]
    with decoding(model, batch_size=3, max_len=10, independent_rows=True) as session:
        with session.selecting([1]), pytest.raises(ValueError):  # raises inside the forward
            model(torch.zeros(1, 3, 5, dtype=torch.float64))
        with session.packing([0, 2], 1):  # two steps and a piece of 3: each its own position
            model(torch.zeros(1, 5, 2, dtype=torch.float64))
    assert model.seen[-1] == [[0, 0, 0, 1, 2]]
    model(x)  # outside again, after a forward that raised inside a session
    assert model.seen[-1] == [[0, 1, 2], [0, 1, 2]]
