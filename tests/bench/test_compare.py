"""``generate --compare``'s comparison: every method timed on one prompt, a differing repeat
caught, the table and the first mismatch."""

from __future__ import annotations

import pytest
import torch

from futurefill.bench import compare
from futurefill.demo import data
from futurefill.pretrained import load_pretrained


@pytest.fixture(scope="module")
def model():
    return load_pretrained()


def test_compare_catches_a_repeat_that_differs(model, monkeypatch):
    import futurefill.generation

    real, calls = futurefill.generation.generate, []

    def flaky(model, ids, n, *, method, **kwargs):
        out = real(model, ids, n, method=method, **kwargs)
        if method == "continuous" and n == 6:
            calls.append(1)
            if len(calls) == 2:  # the second timed run of continuous
                out[0, 2] = (out[0, 2] + 1) % 256
        return out

    monkeypatch.setattr(futurefill.generation, "generate", flaky)
    results = compare.compare_methods(model, data.encode("ab")[None], 6, repeats=3)
    assert [r.method for r in results] == [*compare.METHOD_ORDER, "continuous (repeat 2)"]
    assert "continuous (repeat 2) differs from naive at generated token 2" in (
        compare.mismatch(results)
    )
    with pytest.raises(ValueError, match="repeats"):
        compare.compare_methods(model, data.encode("ab")[None], 6, repeats=0)


def test_table_and_mismatch():
    ids = torch.zeros(1, 10, dtype=torch.long)
    results = [
        compare.CompareResult("naive", ids, 2.0),
        compare.CompareResult("continuous", ids.clone(), 0.5),
    ]
    table = compare.format_table(results)
    assert "4.00x" in table and "1.00x" in table and "20.0" in table
    assert compare.mismatch(results) is None
    results[1].tokens[0, 7] = 3
    assert "token 7" in compare.mismatch(results)
