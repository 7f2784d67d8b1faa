"""One intra-op thread for these tests: their tensors are tiny, and OpenMP threads that spin on a
busy machine made them several times slower (restored after each module)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
