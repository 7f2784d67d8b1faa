"""Test configuration: a deterministic hypothesis profile for CI."""

import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("ci")

# Tests run small ops: one thread avoids waiting on descheduled OpenMP workers on busy machines.
torch.set_num_threads(1)
