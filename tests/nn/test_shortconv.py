"""The short causal depthwise convolution and its decoding with a history buffer: prompts of 0,
1 and many positions, chunks, rows at their own positions (steps, chunks and packed chunks of
rows at different positions, a row reset while the others go on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from futurefill import decoding
from futurefill.nn import ShortConv
from reference import decode_chunks, rel_err


def reference_short_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Plain loop: y[b, t, c] = bias[c] + sum_j weight[c, j] x[b, t - j, c] (zero before 0)."""
    y = np.empty_like(x)
    for t in range(x.shape[1]):
        y[:, t] = bias
        for j in range(weight.shape[1]):
            if t - j >= 0:
                y[:, t] += weight[:, j] * x[:, t - j]
    return y


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
def test_forward_matches_loop(kernel_size):
    torch.manual_seed(kernel_size)
    conv = ShortConv(6, kernel_size).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x)
    ref = reference_short_conv(x.numpy(), conv.weight.detach().numpy(), conv.bias.detach().numpy())
    assert rel_err(y, ref) < 1e-12


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
@pytest.mark.parametrize(
    ("prompt_len", "chunk"), [(0, 1), (1, 1), (2, 1), (3, 1), (7, 1), (0, 5), (2, 12)]
)
def test_session_decoding_matches_forward(kernel_size, prompt_len, chunk):
    torch.manual_seed(0)
    conv = ShortConv(4, kernel_size).double()
    x = torch.randn(3, 12, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = conv(x)
    y, _ = decode_chunks(conv, x, prompt_len, chunk=chunk, max_len=12)
    assert rel_err(y, expected) < 1e-12


def test_reset_zeroes_the_history():
    torch.manual_seed(0)
    conv = ShortConv(4, 3).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    with torch.no_grad(), decoding(conv, batch_size=2, max_len=9) as session:
        first = torch.cat([session.feed(x[:, :4]), session.feed(x[:, 4:])], dim=1)
        session.reset()
        assert session.positions.tolist() == [0, 0]
        again = torch.cat([session.feed(x[:, :4]), session.feed(x[:, 4:])], dim=1)
        assert torch.equal(again, first)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
def test_rows_at_their_own_positions(kernel_size):
    """Each row's outputs are the forward of its own inputs since its start: rows started with
    prompts of different lengths (1 included), stepped and fed chunks side by side at different
    positions, a packed chunk (steps of two rows, a piece of a third), a row reset and restarted
    while the others go on."""
    torch.manual_seed(1)
    conv = ShortConv(4, kernel_size).double()
    x = torch.randn(3, 12, 4, dtype=torch.float64)
    new = torch.randn(12, 4, dtype=torch.float64)  # row 2's second sequence
    with torch.no_grad():
        expected = conv(x)
        expected_new = conv(new[None])[0]
    with torch.no_grad(), decoding(conv, batch_size=3, max_len=12) as session:
        out: dict[int, list[torch.Tensor]] = {0: [], 1: [], 2: []}
        out[0].append(session.feed(x[:1, :1], rows=[0])[0])  # a 1-token prompt
        out[2].append(session.feed(x[2:, :4], rows=[2])[0])
        y = session.feed(torch.stack([x[2, 4:5], x[0, 1:2]]), rows=[2, 0])  # positions 4 and 1
        out[2].append(y[0])
        out[0].append(y[1])
        packed = torch.cat([x[0, 2:3], x[2, 5:6], x[1, :5]])[None]  # steps of 0 and 2, row 1's 5
        y = session.feed_packed(packed, rows=[0, 2], piece_row=1)[0]
        out[0].append(y[:1])
        out[2].append(y[1:2])
        out[1].append(y[2:])
        y = session.feed(torch.stack([x[1, 5:8], x[0, 3:6]]), rows=[1, 0])  # at 5 and 3
        out[1].append(y[0])
        out[0].append(y[1])
        assert session.positions.tolist() == [6, 8, 6]
        session.reset_rows([2])
        assert session.positions.tolist() == [6, 8, 0]
        out[2] = [session.feed(new[None, :2], rows=[2])[0]]
        rest = {0: x[0, 6:], 1: x[1, 8:], 2: new[2:]}
        for t in range(4):  # every row on, one position at a time
            y = session.feed(torch.stack([rest[r][t : t + 1] for r in range(3)]))
            for r in range(3):
                out[r].append(y[r])
        assert session.positions.tolist() == [10, 12, 6]
    for row, expect in ((0, expected[0, :10]), (1, expected[1]), (2, expected_new[:6])):
        assert rel_err(torch.cat(out[row]), expect) < 1e-12, row


def test_history_is_small_and_on_the_layer_dtype():
    conv = ShortConv(5, 3).to(torch.float32)
    with decoding(conv, batch_size=2, max_len=100) as session:
        (state,) = session.states.values()
        assert state.history.shape == (2, 2, 5)
        assert state.history.dtype == torch.float32
        assert session.nbytes == 2 * 2 * 5 * 4


def test_kernel_size_must_be_positive():
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        ShortConv(3, 0)
