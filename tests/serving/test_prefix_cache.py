"""The prefix cache: least recently used evicted first, bounded in bytes, entries too large for
it not kept (and nothing evicted for them), a prompt kept once; hits and misses counted."""

from __future__ import annotations

import pytest
import torch

from futurefill.nn import RowSnapshot
from futurefill.serving import Metrics, PrefixCache
from futurefill.serving.prefix_cache import CachedPrompt


def entry(nbytes: int) -> CachedPrompt:
    """An entry of ``nbytes`` bytes (its logits: 8 of them)."""
    snapshot = RowSnapshot(3, {}, nbytes - 8, origin=None)
    return CachedPrompt(snapshot, torch.zeros(1, dtype=torch.float64))


def test_least_recently_used_goes_first():
    metrics = Metrics()
    cache = PrefixCache(300, metrics)
    for i in range(3):
        assert cache.put([i], entry(100))
    assert cache.get([0]) is not None  # now the most recently used
    assert cache.put([3], entry(100))  # evicts [1], the least recently used
    assert cache.get([1]) is None and cache.get([2]) is not None and len(cache) == 3
    assert cache.nbytes == 300 and metrics.prefix_cache_bytes._value.get() == 300
    assert metrics.prefix_cache_lookups.labels(result="hit")._value.get() == 2
    assert metrics.prefix_cache_lookups.labels(result="miss")._value.get() == 1


def test_an_entry_larger_than_the_cache_is_not_kept_and_evicts_nothing():
    cache = PrefixCache(300)
    cache.put([1], entry(200))
    assert not cache.put([2], entry(301))
    assert len(cache) == 1 and cache.nbytes == 200
    assert cache.put([1], entry(250))  # a prompt kept again replaces its entry
    assert len(cache) == 1 and cache.nbytes == 250
    assert cache.put([1, 2], entry(50)) and cache.get([1, 2, 3]) is None


def test_capacity_zero_keeps_nothing_and_a_bad_capacity_is_refused():
    cache = PrefixCache(0)
    assert not cache.put([1], entry(16)) and cache.get([1]) is None
    for bad in (-1, 1.5, True, "1G"):
        with pytest.raises(ValueError, match="prefix cache capacity must be an int >= 0"):
            PrefixCache(bad)
