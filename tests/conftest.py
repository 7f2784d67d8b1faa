"""Test configuration: a deterministic hypothesis profile for CI, one intra-op thread."""

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tests run tiny ops: OpenMP threads that spin on a busy machine made them several times
    slower. Every module starts with one thread, whatever the module before it set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
