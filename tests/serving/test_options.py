"""SchedulerOptions: the name a model is served under, and values out of range refused by name
(what a Serve config file or Python code pass reaches it unchecked by the command line)."""

from __future__ import annotations

import pytest

from futurefill.serving.options import BUNDLED_NAME, SchedulerOptions


def test_the_served_name():
    assert SchedulerOptions().name == BUNDLED_NAME
    assert SchedulerOptions(model="/ckpt/hyenadna-small").name == "hyenadna-small"
    assert SchedulerOptions(model="/ckpt/x", model_name="dna").name == "dna"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"slots": 0}, "slots must be an integer >= 1, got 0"),
        ({"slots": 2000}, r"slots must be an integer in \[1, 1024\]"),
        ({"queue_size": -1}, "queue_size must be an integer >= 0"),
        ({"prefill_chunk": 1.5}, "prefill_chunk must be an integer >= 1"),
        ({"prefix_cache_bytes": True}, "prefix_cache_bytes must be an integer"),
        ({"threads": 0}, "threads must be an integer >= 1"),
        ({"method": "fast"}, "method must be one of naive, epoched"),
        ({"model": ""}, "model must be a non-empty string"),
        ({"compile": "yes"}, "compile must be true or false"),
    ],
)
def test_values_out_of_range_are_refused_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        SchedulerOptions(**changes)
