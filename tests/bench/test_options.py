"""Config fields as options: the Python API refuses what the command line refuses."""

import dataclasses

import pytest

from futurefill.bench import options


def test_check_options_refuses_what_the_command_line_refuses():
    from futurefill.bench.layer import LayerConfig

    options.check_options(LayerConfig(lengths=(8, 16), threads=1))
    for bad, message in [
        ({"lengths": (0,)}, "lengths: must be a length >= 1, got 0"),
        ({"lengths": ()}, "lengths: give at least one value"),
        ({"methods": ("fast",)}, "unknown methods"),
        ({"threads": 10**6}, "threads: must be a thread count in"),
        ({"budget": -1.0}, r"budget: must be a finite number in \(0, inf\)"),
        ({"dtype": "float8"}, "unknown dtype"),
    ]:
        with pytest.raises(ValueError, match=message):
            options.check_options(LayerConfig(**bad))


def test_a_length_sweep_has_lengths_and_its_longest():
    from futurefill.bench.model import ModelConfig

    config = ModelConfig(lengths=(64, 16, 32))
    assert config.longest == 64 and config.slope_from is None
    field = {f.name: f for f in dataclasses.fields(ModelConfig)}["lengths"]
    assert field.metadata["nargs"] == "+" and field.metadata["type"] is options.LENGTH
    with pytest.raises(ValueError, match="lengths: must be a length >= 1, got 0"):
        options.check_options(ModelConfig(lengths=(0,)))
