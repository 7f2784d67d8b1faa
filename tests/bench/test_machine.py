"""The machine record, its one-line summary, threads and the device."""

import pytest
import torch

from futurefill.bench import machine


def test_torch_threads_restored():
    before = torch.get_num_threads()
    with machine.torch_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


def test_machine_info_names_the_machine():
    info = machine.machine_info(torch.device("cpu"), torch.float32)
    for key in ("cpu", "available_cores", "torch_threads", "torch_version", "device", "dtype"):
        assert info[key] not in (None, "")
    assert info["dtype"] == "float32"
    line = machine.machine_line({**info, "load_average_1min": 0.7, "load_average_1min_after": 1.8})
    assert line.endswith("load 0.7 before, 1.8 after")


def test_cuda_device_refused_cleanly_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="CUDA is not available"):
        machine.resolve_device("cuda")
