"""The no-cache baseline: every step is the forward of all the inputs so far."""

import torch

from futurefill.bench.layer import RecomputeConv
from futurefill.bench.recompute import Recompute
from futurefill.fftconv import causal_conv


class RunningSum(Recompute):
    def forward(self, prefix):
        return prefix.sum(dim=-1)


def test_step_feeds_forward_every_input_so_far():
    stepper = RunningSum(torch.zeros(2, 5))
    outs = [stepper.step(torch.tensor([t, -t], dtype=torch.float32)) for t in range(1, 4)]
    assert [o.tolist() for o in outs] == [[1.0, -1.0], [3.0, -3.0], [6.0, -6.0]]
    assert stepper.nbytes == 2 * 5 * 4  # the input buffer, all it holds


def test_recompute_conv_is_the_causal_convolution():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    u = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    stepper = RecomputeConv(h, max_len=8, batch_size=2)
    y = torch.stack([stepper.step(u[..., t]) for t in range(8)], dim=-1)
    torch.testing.assert_close(y, causal_conv(u, h))
