"""The engine registry: a method declared once is what make_engine, sessions and generate
offer, with its knobs checked by its engine."""

from __future__ import annotations

import pytest
import torch

from futurefill import ConvLM, ConvLMConfig, generate
from futurefill.online import (
    ENGINES,
    METHODS,
    NaiveConv,
    OnlineConvEngine,
    check_engine_options,
    make_engine,
    methods_table,
    register,
)
from reference import decaying_filter, random_input, reference_conv, rel_err


class ReversedNaive(NaiveConv):
    """A 'new' engine for the tests: the naive one under another name."""

    method = "reversed_naive"
    summary = "the naive engine again"


@pytest.fixture
def registered():
    register(ReversedNaive)
    yield ReversedNaive
    del ENGINES[ReversedNaive.method]


def test_the_registry_holds_the_five_methods_in_order():
    assert tuple(ENGINES) == ("naive", "epoched", "continuous", "deamortized", "modal")
    assert tuple(METHODS) == tuple(ENGINES)[:4]  # modal decodes filters in modal form only
    assert all(ENGINES[name].method == name for name in ENGINES)
    table = methods_table().splitlines()
    assert [line.split()[0] for line in table] == list(ENGINES)
    assert all(ENGINES[name].summary in line for name, line in zip(ENGINES, table, strict=True))


def test_a_registered_engine_is_offered_everywhere(registered):
    assert "reversed_naive" in METHODS and METHODS[-1] == "reversed_naive"
    h, u = decaying_filter(3, 12), random_input(2, 3, 12)
    engine = make_engine(h, "reversed_naive", batch_size=2)
    y = torch.cat(
        [engine.prefill(u[..., :5]), *(engine.step(u[..., t])[..., None] for t in range(5, 12))],
        dim=-1,
    )
    assert rel_err(y, reference_conv(u.numpy(), h.numpy())) < 1e-10
    torch.manual_seed(0)
    lm = ConvLM(ConvLMConfig(vocab_size=16, d_model=8, n_layers=1, max_len=16, mixer="longconv"))
    ids = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(generate(lm, ids, 5, method="reversed_naive"), generate(lm, ids, 5))


def test_register_refuses_what_is_not_an_engine_or_a_second_owner_of_a_name():
    with pytest.raises(TypeError, match="register takes an OnlineConvEngine subclass"):
        register(int)

    class Nameless(NaiveConv):
        method = "not a name"

    with pytest.raises(ValueError, match="method must be a name"):
        register(Nameless)

    class Impostor(NaiveConv):
        method = "continuous"

    with pytest.raises(ValueError, match="'continuous' is already registered to ContinuousConv"):
        register(Impostor)
    assert ENGINES["continuous"].__name__ == "ContinuousConv"
    assert issubclass(ENGINES["naive"], OnlineConvEngine)


def test_knobs_are_checked_by_their_engine():
    assert check_engine_options("continuous", {"tile_len": 8, "epoch_len": None}) == {"tile_len": 8}
    with pytest.raises(ValueError, match="unknown method 'fast'; expected one of"):
        check_engine_options("fast", {})
    with pytest.raises(TypeError, match="unknown engine option 'tile'; the options are epoch_len"):
        check_engine_options("continuous", {"tile": 8})
    with pytest.raises(ValueError, match="tile_len applies to method='continuous' or "):
        check_engine_options("naive", {"tile_len": 8})
    with pytest.raises(ValueError, match="tile_len must be a positive power of two"):
        check_engine_options("deamortized", {"tile_len": 6})
    with pytest.raises(ValueError, match="epoch_len must be"):
        check_engine_options("epoched", {"epoch_len": 0})
