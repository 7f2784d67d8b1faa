"""Cache sizes: Continuous-FutureFill keeps O(max_len - P) after a prompt of length P."""

import itertools

import pytest
import torch

from futurefill import OnlineConv
from reference import decaying_filter, random_input


def nbytes_after_prompt(method: str, prompt_len: int, generate: int) -> int:
    h = decaying_filter(4, prompt_len + generate, dtype=torch.float32)
    conv = OnlineConv(h, method=method, batch_size=2)
    conv.prefill(random_input(2, 4, prompt_len, dtype=torch.float32))
    return conv.nbytes


def test_continuous_cache_flat_in_prompt_length():
    sizes = [nbytes_after_prompt("continuous", p, 256) for p in (64, 1024, 8192)]
    assert sizes[0] == sizes[1] == sizes[2]


def test_continuous_cache_grows_with_generated_length():
    sizes = [nbytes_after_prompt("continuous", 1024, k) for k in (128, 512, 2048)]
    assert sizes[0] < sizes[1] < sizes[2]
    # Linear in K: the cache and input buffers (2 K batch channels floats) dominate.
    per_step = 2 * 2 * 4 * 4  # 2 buffers * batch 2 * 4 channels * 4 bytes
    assert sizes[2] - sizes[1] >= (2048 - 512) * per_step
    assert sizes[2] < 6 * 2048 * per_step


@pytest.mark.parametrize("method", ["naive", "epoched"])
def test_history_methods_grow_with_prompt(method):
    sizes = [nbytes_after_prompt(method, p, 256) for p in (64, 1024, 8192)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_epoched_cache_is_epoch_sized():
    h = decaying_filter(4, 1000, dtype=torch.float32)
    small = OnlineConv(h, method="epoched", epoch_len=10).engine
    big = OnlineConv(h, method="epoched", epoch_len=100).engine
    assert small._cache.shape == (10, 1, 4)
    assert big._cache.shape == (100, 1, 4)


def test_continuous_without_prompt_scales_with_max_len():
    h = decaying_filter(4, 4096, dtype=torch.float32)
    sizes = [OnlineConv(h, max_len=n).nbytes for n in (512, 1024, 2048, 4096)]
    ratios = [b / a for a, b in itertools.pairwise(sizes)]
    assert all(1.8 < r < 2.2 for r in ratios), ratios
