"""Test configuration: a deterministic hypothesis profile for CI, one intra-op thread, and the
``device`` fixture: a test that takes it runs on the CPU and, where CUDA is available, on the
GPU (its CUDA case is marked ``cuda``, collected everywhere and skipped without a GPU:
``pytest -m cuda`` runs the CUDA cases alone)."""

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


CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ],
)


@pytest.fixture(params=["cpu", CUDA])
def device(request) -> torch.device:
    """The device a test runs on: ``cpu``, and ``cuda`` (skipped where there is none)."""
    return torch.device(request.param)
