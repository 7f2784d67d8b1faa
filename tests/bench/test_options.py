"""Config fields as options: the Python API refuses what the command line refuses."""

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
