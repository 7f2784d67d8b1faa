"""Bad input gets a clear error, and a rejected call leaves the engine usable."""

import pydoc

import numpy as np
import pytest
import torch

from futurefill import METHODS, OnlineConv
from reference import decaying_filter, random_input, reference_conv, rel_err


@pytest.fixture(params=METHODS)
def method(request):
    return request.param


def make(method, **kwargs):
    h = kwargs.pop("h", decaying_filter(3, 20))
    return OnlineConv(h, method=method, batch_size=kwargs.pop("batch_size", 2), **kwargs)


def test_construction_errors(method):
    with pytest.raises(ValueError, match=r"\(channels, filter_len\)"):
        make(method, h=torch.zeros(20, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"exceeds filter_len 20"):
        make(method, max_len=21)
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        make(method, max_len=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make(method, batch_size=0)
    with pytest.raises(TypeError, match="floating dtype"):
        make(method, h=torch.zeros(3, 20, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        make(method, h=[[1.0, 2.0]])


def test_unknown_method_and_foreign_options():
    h = decaying_filter(3, 20)
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        OnlineConv(h, method="fast")
    with pytest.raises(ValueError, match="epoch_len must be >= 1"):
        OnlineConv(h, method="epoched", epoch_len=0)
    with pytest.raises(ValueError, match="epoch_len must be >= 1"):
        OnlineConv(h, method="epoched", epoch_len=-3)
    with pytest.raises(ValueError, match="power of two"):
        OnlineConv(h, method="continuous", tile_len=6)
    with pytest.raises(ValueError, match="power of two"):
        OnlineConv(h, method="continuous", tile_len=0)
    with pytest.raises(ValueError, match="epoch_len applies to method='epoched' only"):
        OnlineConv(h, method="continuous", epoch_len=4)
    with pytest.raises(
        ValueError, match="tile_len applies to method='continuous' or method='deamortized' only"
    ):
        OnlineConv(h, method="naive", tile_len=4)


def test_step_shape_dtype_device(method):
    conv = make(method)
    u64 = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(batch_size, channels\) = \(2, 3\)"):
        conv.step(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="got \\(3, 3\\)"):
        conv.step(torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        conv.step(torch.zeros(2, 3, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"expected torch\.float64"):
        conv.step(u64.float())
    with pytest.raises(ValueError, match="expected cpu"):
        conv.step(u64.to("meta"))
    assert conv.position == 0


def test_prefill_errors(method):
    conv = make(method)
    u = random_input(2, 3, 5)
    with pytest.raises(ValueError, match=r"\(batch_size, channels, P\) = \(2, 3, P\)"):
        conv.prefill(random_input(1, 3, 5))
    with pytest.raises(ValueError, match=r"\(batch_size, channels, P\)"):
        conv.prefill(random_input(2, 4, 5))
    with pytest.raises(ValueError, match=r"\(batch_size, channels, P\)"):
        conv.prefill(u[0])
    with pytest.raises(ValueError, match="max_len=20"):
        conv.prefill(random_input(2, 3, 21))
    with pytest.raises(ValueError, match="prompt length"):
        conv.prefill(random_input(2, 3, 0))
    with pytest.raises(TypeError, match="dtype"):
        conv.prefill(u.float())
    conv.prefill(u)
    with pytest.raises(RuntimeError, match="prefill must come first, once"):
        conv.prefill(u)
    conv.reset()
    conv.step(u[..., 0])
    with pytest.raises(RuntimeError, match="at position 1"):
        conv.prefill(u)


def test_step_past_max_len_then_usable(method):
    h = decaying_filter(3, 20)
    u = random_input(2, 3, 6)
    conv = make(method, h=h, max_len=6)
    conv.prefill(u[..., :2])
    for t in range(2, 6):
        conv.step(u[..., t])
    with pytest.raises(RuntimeError, match="past max_len=6"):
        conv.step(u[..., 0])
    assert conv.position == 6
    conv.reset()
    out = torch.stack([conv.step(u[..., t]) for t in range(6)], -1)
    assert rel_err(out, reference_conv(u, h)) < 1e-10


def test_rejected_step_leaves_engine_usable(method):
    """A wrong input in the middle of decoding changes nothing: the sequence continues exactly."""
    h = decaying_filter(3, 20)
    u = random_input(2, 3, 20)
    conv = make(method, h=h)
    outputs = [conv.prefill(u[..., :3])]
    for t in range(3, 20):
        with pytest.raises((ValueError, TypeError)):
            conv.step(u[..., t].float())
        with pytest.raises(ValueError):
            conv.step(u[:1, :, t])
        outputs.append(conv.step(u[..., t]).unsqueeze(-1))
    assert rel_err(torch.cat(outputs, -1), reference_conv(u, h)) < 1e-10


def test_bad_out_buffer_is_rejected_and_changes_nothing(method):
    h = decaying_filter(3, 20)
    u = random_input(2, 3, 20)
    conv = make(method, h=h)
    outputs = []
    for t in range(20):
        with pytest.raises(ValueError, match=r"out must have shape \(batch_size, channels\)"):
            conv.step(u[..., t], out=torch.empty(2, 4, dtype=torch.float64))
        with pytest.raises(TypeError, match=r"out has dtype torch\.float32"):
            conv.step(u[..., t], out=torch.empty(2, 3))
        with pytest.raises(ValueError, match="out is on meta"):
            conv.step(u[..., t], out=torch.empty(2, 3, dtype=torch.float64, device="meta"))
        assert conv.position == t
        outputs.append(conv.step(u[..., t]))
    assert rel_err(torch.stack(outputs, -1), reference_conv(u, h)) < 1e-10


def test_non_integer_sizes_are_rejected_not_truncated():
    h = decaying_filter(3, 20)
    with pytest.raises(TypeError, match=r"batch_size must be an int, got 2\.7"):
        OnlineConv(h, batch_size=2.7)
    with pytest.raises(TypeError, match=r"max_len must be an int, got 3\.9"):
        OnlineConv(h, max_len=3.9)
    with pytest.raises(TypeError, match="batch_size must be an int, got a bool"):
        OnlineConv(h, batch_size=True)
    with pytest.raises(TypeError, match=r"epoch_len must be an int, got 2\.5"):
        OnlineConv(h, method="epoched", epoch_len=2.5)
    with pytest.raises(TypeError, match="tile_len must be an int"):
        OnlineConv(h, method="continuous", tile_len=4.0)
    assert OnlineConv(h, batch_size=np.int64(2)).engine.batch_size == 2


def test_a_list_is_not_a_step_input(method):
    conv = make(method)
    with pytest.raises(TypeError, match=r"u_t must be a torch\.Tensor of shape"):
        conv.step([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(TypeError, match=r"out must be a torch\.Tensor"):
        conv.step(torch.zeros(2, 3, dtype=torch.float64), out=[0.0])
    assert conv.position == 0


def test_help_shows_the_methods():
    for name in ("prefill", "step", "reset"):
        method = getattr(OnlineConv, name)
        assert callable(method) and method.__doc__, name
    assert "step(self, u_t" in pydoc.render_doc(OnlineConv, renderer=pydoc.plaintext)
