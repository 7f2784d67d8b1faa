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
            assert session.positions.tolist() == [0, 0] and session.nbytes == 0
            assert all(module.decoding for module in (m.first, m.second))
            y = torch.cat(
                [session.feed(x[:, :4]), session.feed(x[:, 4:5]), session.feed(x[:, 5:])], 1
            )
            assert session.positions.tolist() == [10, 10] and session.nbytes > 0
            assert (y - expected).abs().max() < 1e-12
            session.reset()
            assert session.positions.tolist() == [0, 0]
            assert (session.feed(x) - expected).abs().max() < 1e-12
    assert session.closed and "closed" in repr(session)
    assert not m.first.decoding
    with torch.no_grad():
        assert torch.equal(m(x), expected)  # an ordinary module again


def test_rows_continue_from_their_own_positions():
    """Rows fed apart, a packed chunk and a reset of one row: each row's outputs are its own
    sequence's forward."""
    m = model()
    x = u(batch=3, length=12, seed=1)
    with torch.no_grad():
        expected = m(x)
        with decoding(m, batch_size=3, max_len=12, method="continuous", tile_len=2) as session:
            a = session.feed(x[1:2, :5], rows=[1])  # row 1: a prompt of 5
            b = session.feed(x[[2, 0], :1], rows=[2, 0])  # rows 2 and 0 start by stepping
            packed = torch.cat([x[1, 5:6], x[0, 1:2], x[2, 1:4]])[None]
            c = session.feed_packed(packed, rows=[1, 0], piece_row=2)  # steps, a piece of 3
            assert session.positions.tolist() == [2, 6, 4]
            session.reset_rows([1])
            d = session.feed(x[1:2, :3], rows=[1])
            assert session.positions.tolist() == [2, 3, 4]
    assert (a[0] - expected[1, :5]).abs().max() < 1e-12
    assert (b[0, 0] - expected[2, 0]).abs().max() < 1e-12
    assert (b[1, 0] - expected[0, 0]).abs().max() < 1e-12
    assert (c[0, 0] - expected[1, 5]).abs().max() < 1e-12
    assert (c[0, 1] - expected[0, 1]).abs().max() < 1e-12
    assert (c[0, 2:] - expected[2, 1:4]).abs().max() < 1e-12
    assert (d[0] - expected[1, :3]).abs().max() < 1e-12


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


def test_the_model_is_called_through_the_session():
    m = model()
    with torch.no_grad(), decoding(m, batch_size=2, max_len=10) as session:
        with pytest.raises(RuntimeError, match=r"call the model through it \(session.feed\)"):
            m(u(length=2))
        assert session.positions.tolist() == [0, 0]


def test_errors_leave_the_session_where_it_was():
    m = model()
    with torch.no_grad(), decoding(m, batch_size=2, max_len=10) as session:
        session.feed(u(length=6))
        with pytest.raises(ValueError, match="the chunk has a batch of 3; batch_size=2"):
            session.feed(u(batch=3, length=1))
        with pytest.raises(ValueError, match="no room for 5 more"):
            session.feed(u(length=5))
        with pytest.raises(ValueError, match=r"channels=4"):
            session.feed(torch.zeros(2, 1, D + 1, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"rows must be distinct"):
            session.feed(u(length=1), rows=[1, 1])
        with pytest.raises(ValueError, match=r"rows must be ints in \[0, 2\)"):
            session.feed(u(batch=1, length=1), rows=[2])
        assert session.positions.tolist() == [6, 6]
        y = session.feed(u(length=4, seed=1))
        assert session.positions.tolist() == [10, 10]
    with torch.no_grad():
        expected = m(torch.cat([u(length=6), u(length=4, seed=1)], 1))
    assert (y - expected[:, 6:]).abs().max() < 1e-12


class Fails(nn.Module):
    """A long convolution, then a layer that raises when asked."""

    def __init__(self):
        super().__init__()
        self.conv, self.fail = LongConv(D, 20).double(), False

    def forward(self, x):
        y = self.conv(x)
        if self.fail:
            raise KeyError("inside the model")
        return y


def test_a_call_that_fails_after_a_module_moved_resets_its_rows():
    m = Fails()
    x = u(batch=2, length=8)
    with torch.no_grad(), decoding(m, batch_size=2, max_len=10) as session:
        session.feed(x[:, :3])
        m.fail = True
        with pytest.raises(KeyError) as error:
            session.feed(x[1:, 3:5], rows=[1])
        assert "the rows [1] of the failed call were reset" in "".join(error.value.__notes__)
        assert session.positions.tolist() == [3, 0]
        m.fail = False
        y0 = session.feed(x[:1, 3:8], rows=[0])  # row 0 goes on as if nothing happened
        y1 = session.feed(x[1:, :4], rows=[1])  # row 1 starts anew
    with torch.no_grad():
        expected = m(x)
    assert (y0[0] - expected[0, 3:8]).abs().max() < 1e-12
    assert (y1[0] - expected[1, :4]).abs().max() < 1e-12


def test_a_cast_during_a_session_is_named_in_model_terms():
    m = model()
    with torch.no_grad(), decoding(m, batch_size=1) as session:
        session.feed(u(batch=1, length=3))
        m.float()
        with pytest.raises(
            RuntimeError,
            match=r"'first' started this decoding session with "
            r"torch\.float64 inputs .* now gets torch\.float32",
        ):
            session.feed(u(batch=1, length=1, dtype=torch.float32))
        assert session.positions.tolist() == [3]


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
        with pytest.raises(ValueError, match="the chunk has a batch of 3; batch_size=2"):
            session.feed(u(batch=3, length=2, dtype=torch.float32).double())
        m.float()  # the session has seen no accepted chunk: float32 is still fine
        y = session.feed(u(length=4, dtype=torch.float32))
        assert y.dtype == torch.float32 and session.positions.tolist() == [4, 4]


class PositionsRecorder(torch.nn.Module):
    """A model that records what futurefill.nn.positions gives at every call."""

    def __init__(self):
        super().__init__()
        from futurefill.nn import LongConv

        self.conv, self.seen = LongConv(2, 32), []

    def forward(self, x):
        from futurefill.nn import positions

        self.seen.append(positions(self, x).tolist())
        return self.conv(x)


def test_positions_outside_for_rows_and_packed_chunks():
    from futurefill import decoding

    model = PositionsRecorder().double()
    x = torch.zeros(2, 3, 2, dtype=torch.float64)
    model(x)
    assert model.seen[-1] == [[0, 1, 2], [0, 1, 2]]
    with decoding(model, batch_size=3, max_len=10) as session:
        session.feed(x[:1], rows=[2])
        session.feed(x[:, :1], rows=[0, 2])
        assert model.seen[-2:] == [[[0, 1, 2]], [[0], [3]]]
        session.feed(x[:1], rows=[1])
        session.feed(x[:1, :2], rows=[1])
        assert model.seen[-1] == [[3, 4]]
        with pytest.raises(ValueError):  # raises inside the forward
            session.feed(torch.zeros(1, 3, 5, dtype=torch.float64), rows=[1])
        session.reset_rows([1])
        session.feed_packed(torch.zeros(1, 5, 2, dtype=torch.float64), rows=[0, 2], piece_row=1)
        assert model.seen[-1] == [[1, 4, 0, 1, 2]]  # two steps and a piece of 3, each its own
    model(x)  # outside again, after a forward that raised inside a session
    assert model.seen[-1] == [[0, 1, 2], [0, 1, 2]]


def test_a_deamortized_session_owns_one_worker_and_joins_it_at_close():
    """Every engine of the session queues its jobs on the session's worker; closing the session
    ends its thread (no process-wide worker left behind)."""
    import threading

    torch.manual_seed(0)
    model = nn.Sequential(LongConv(64, 512), LongConv(64, 512)).double()
    x = torch.randn(2, 400, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        with decoding(model, batch_size=2, max_len=400, method="deamortized") as session:
            y = [session.feed(x[:, :8])] + [session.feed(x[:, t : t + 1]) for t in range(8, 400)]
            engines = [e for s in session.states.values() for e in s.engine.engines]
            assert len(engines) == 4 and all(e._worker is session.worker for e in engines)
            worker_threads = [
                t for t in threading.enumerate() if t.name == "futurefill-deamortized"
            ]
            assert worker_threads  # the large levels' jobs went to the worker
    assert session.worker.closed and not any(t.is_alive() for t in worker_threads)
    assert (torch.cat(y, 1) - expected).abs().max() < 1e-10


def test_calls_run_without_autograd_whatever_the_grad_mode():
    """A session's calls decode (inference): with grad enabled and parameters that require it,
    the states stay out of autograd graphs, calls after the first work, and the outputs are the
    forward's."""
    m = model()
    x = u(length=6)
    expected = m(x).detach()
    assert torch.is_grad_enabled() and m.first.weight.requires_grad
    with decoding(m, batch_size=2, max_len=10) as session:
        y = torch.cat(
            [session.feed(x[:, :3])] + [session.feed(x[:, t : t + 1]) for t in (3, 4, 5)], 1
        )
    assert not y.requires_grad
    assert (y - expected).abs().max() < 1e-12


@pytest.mark.parametrize("method", ["naive", "epoched", "continuous", "deamortized"])
def test_calls_and_resets_in_and_out_of_inference_mode(method):
    """A session opened and fed inside ``torch.inference_mode`` and then reset and fed outside
    it (and back): the states are ordinary tensors, so every row goes on exactly."""
    torch.manual_seed(0)
    m = nn.Sequential(ShortConv(D), LongConv(D, 32)).double()
    x = u(length=9)
    with torch.no_grad():
        expected = m(x)
    with torch.inference_mode():
        session = decoding(m, batch_size=2, method=method)
        a = session.feed(x[:, :5])
    session.reset_rows([0])  # outside inference mode
    b = session.feed(x[1:, 5:9], rows=[1])
    with torch.inference_mode():
        c = session.feed(x[:1, :3], rows=[0])
    d = session.feed(x[:1, 3:4], rows=[0])
    session.close()
    assert (a - expected[:, :5]).abs().max() < 1e-12
    assert (b[0] - expected[1, 5:9]).abs().max() < 1e-12
    assert (c[0] - expected[0, :3]).abs().max() < 1e-12
    assert (d[0] - expected[0, 3:4]).abs().max() < 1e-12


@pytest.mark.parametrize("method", ["continuous", "deamortized", "naive"])
def test_a_closed_session_frees_its_states_without_the_cycle_collector(method):
    """A state refers to its session: closing drops them, so their buffers go when the last
    reference does (a generate() call's memory, as soon as it returns)."""
    import gc
    import weakref

    gc.disable()
    try:
        with decoding(model(), batch_size=2, max_len=10, method=method) as session:
            session.feed(u())
            state = next(iter(session.states.values()))
            freed = weakref.ref(state)
            del state
        assert freed() is None and session.nbytes == 0
    finally:
        gc.enable()
