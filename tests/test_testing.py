"""futurefill.testing and a model written the way a user would write it (not a futurefill class):
it generates with every method, and decoding matches its own forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from futurefill import METHODS, generate
from futurefill import nn as ffnn
from futurefill.testing import assert_decoding_matches_forward

VOCAB, WIDTH, MAX_LEN = 17, 6, 40


class GatedConvLM(nn.Module):
    """A user's gated long-convolution LM: explicit and implicit filters, a short conv."""

    def __init__(self, time_mix: str = "futurefill"):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.proj = nn.Linear(WIDTH, 2 * WIDTH)
        self.short = ffnn.ShortConv(2 * WIDTH, 3)
        self.long = ffnn.LongConv(WIDTH, MAX_LEN, skip=True)
        self.decay = nn.Parameter(torch.linspace(0.05, 0.5, WIDTH))
        self.implicit = ffnn.LongConv(WIDTH, MAX_LEN, filter=self.filter)
        self.conv1d = nn.Conv1d(WIDTH, WIDTH, 3, padding=2, groups=WIDTH)
        self.time_mix = time_mix
        self.head = nn.Linear(WIDTH, VOCAB)

    def filter(self, length: int) -> torch.Tensor:
        t = torch.arange(length, dtype=self.decay.dtype)
        return torch.exp(-self.decay[:, None] * t) * torch.cos(t / 3)

    def forward(self, ids):
        x, gate = self.short(self.proj(self.embed(ids))).chunk(2, dim=-1)
        x = self.long(x) * torch.sigmoid(gate)
        if self.time_mix == "conv1d":  # time mixing outside futurefill.nn: cannot decode
            x = x + self.conv1d(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)
        elif self.time_mix == "cumsum":
            x = x + x.cumsum(dim=1)
        return self.head(self.implicit(torch.tanh(x)))


class HFStyleOutput:
    def __init__(self, logits):
        self.logits = logits


class HFStyle(GatedConvLM):
    def forward(self, ids):
        return HFStyleOutput(super().forward(ids))


def user_model(cls=GatedConvLM, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return cls(**kwargs).double()


def ids(batch=3, length=21, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [GatedConvLM, HFStyle])
def test_a_user_model_decodes_exactly(cls):
    assert_decoding_matches_forward(user_model(cls), ids(), prompt_lens=(0, 1, 10, 21))
    assert_decoding_matches_forward(user_model(cls), ids(), methods=["continuous"], tile_len=2)
    assert_decoding_matches_forward(user_model(cls).float(), ids(), rtol=1e-4)


@pytest.mark.parametrize("time_mix", ["conv1d", "cumsum"])
def test_the_helper_catches_time_mixing_outside_futurefill_nn(time_mix):
    model = user_model(time_mix=time_mix)
    with pytest.raises(
        AssertionError, match=r"method='naive', prompt_len=0: .* first at position 1"
    ):
        assert_decoding_matches_forward(model, ids())


def test_the_helper_reports_the_first_bad_position():
    model = user_model()
    with torch.no_grad():
        model.long.weight[:, 7:] += 1e-6  # changes outputs from position 7 on, under the tol
    assert_decoding_matches_forward(model, ids(), methods=["naive"], rtol=1e-3)

    class Offset(GatedConvLM):  # decoding differs from forward at position 5 onwards
        def forward(self, ids):
            out = super().forward(ids)
            if self.long.decoding and int(self.long._state.session.positions[0]) >= 5:
                out = out + 1.0
            return out

    with pytest.raises(AssertionError, match="first at position 5"):
        assert_decoding_matches_forward(user_model(Offset), ids(), methods=["epoched"])


@pytest.mark.parametrize("method", METHODS)
def test_a_user_model_generates_with_every_method(method):
    model = user_model()
    prompt = ids(2, 7)
    tokens = generate(model, prompt, 20, method=method)
    reference = generate(model, prompt, 20, method="naive")
    assert torch.equal(tokens, reference)
    # Greedy generation by recomputing the forward over the whole sequence at every step.
    seq = prompt
    with torch.no_grad():
        for _ in range(20):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(tokens, seq[:, 7:])


def test_generate_accepts_outputs_with_logits_and_ragged_prompts():
    model = user_model(HFStyle)
    prompt = ids(2, 9)
    out = generate(model, prompt, 6, prompt_lengths=[4, 9], return_logits=True)
    alone = generate(model, prompt[:1, :4], 6)
    assert torch.equal(out.tokens[:1], alone)
    assert out.logits.shape == (2, 6, VOCAB)


def test_a_model_without_decoding_modules_fails_the_check_with_an_assertion():
    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8))
    with pytest.raises(AssertionError, match=r"Sequential has no futurefill\.nn modules"):
        assert_decoding_matches_forward(model, torch.zeros(1, 3, dtype=torch.long))
