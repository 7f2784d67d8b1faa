"""Decoder: prefill, step and reset of a batch against the model's float64 parallel forward,
for every method, eager and compiled, ragged prompts, feedback loops; errors leave it as it was."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill import METHODS, Decoder
from reference import rel_err, tiny_lm

VOCAB, MAX_LEN = 32, 40


def tiny_model(mixer: str = "hyena", seed: int = 0):
    return tiny_lm(mixer, seed, max_len=MAX_LEN, vocab=VOCAB)


def greedy_by_forward(model, prompt: torch.Tensor, steps: int) -> tuple[list, torch.Tensor]:
    """Greedy tokens and their logits by the full forward over the whole sequence per token."""
    ids, logits = prompt, []
    for _ in range(steps):
        last = model(ids)[:, -1]
        logits.append(last)
        ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt.shape[1] :], torch.stack(logits, dim=1)


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_greedy_feedback_loop_matches_the_forward(method, compile):
    model = tiny_model()
    prompt = torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))
    steps = 25
    tokens, expected = greedy_by_forward(model, prompt, steps)
    with Decoder(model, batch_size=3, max_len=32, method=method, compile=compile) as decoder:
        out = decoder.prefill(prompt)
        got = [out.logits]
        for i in range(steps - 1):
            out = decoder.step(tokens[:, i])
            got.append(out.logits)
            assert torch.equal(out.greedy, out.logits.argmax(-1))
        assert decoder.positions.tolist() == [7 + steps - 1] * 3
    assert rel_err(torch.stack(got, dim=1), expected) < 1e-10


@settings(max_examples=10, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=2, max_size=3),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 1000),
)
def test_ragged_prompts_get_what_they_get_alone(lengths, method, seed):
    model = tiny_model(seed=seed % 3)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(lengths), max(lengths)), generator=gen)
    with Decoder(model, batch_size=len(lengths), max_len=20, method=method) as decoder:
        first = decoder.prefill(ids, lengths).logits
        feed = torch.randint(0, VOCAB, (len(lengths),), generator=gen)
        second = decoder.step(feed).logits
    for row, n in enumerate(lengths):
        alone = model(torch.cat([ids[row : row + 1, :n], feed[row].view(1, 1)], dim=1))
        assert rel_err(first[row], alone[0, n - 1]) < 1e-10
        assert rel_err(second[row], alone[0, n]) < 1e-10


@pytest.mark.parametrize("compile", [False, True])
def test_reset_starts_new_sequences_with_the_same_state(compile):
    model = tiny_model()
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    with Decoder(model, batch_size=2, max_len=16, compile=compile) as decoder:
        runs = []
        for _ in range(2):
            out = decoder.prefill(prompt)
            logits = [out.logits]
            for _ in range(6):
                out = decoder.step(out.greedy)
                logits.append(out.logits)
            runs.append(torch.stack(logits))
            nbytes = decoder.nbytes
            decoder.reset()
            assert decoder.positions.tolist() == [0, 0] and decoder.nbytes == nbytes
    assert torch.equal(runs[0], runs[1])


def test_steps_without_a_prompt_start_at_position_zero():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
    with Decoder(model, batch_size=1, max_len=8, compile=True) as decoder:
        got = torch.stack([decoder.step(ids[:, t]).logits for t in range(6)], dim=1)
    assert rel_err(got, model(ids)) < 1e-10


def test_errors_name_the_argument_and_leave_the_decoder_as_it_was():
    model = tiny_model()
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        Decoder("model", batch_size=1)
    with pytest.raises(TypeError, match="compile must be a bool"):
        Decoder(model, batch_size=1, compile=1)
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        Decoder(model, batch_size=1, method="fast")
    with pytest.raises(ValueError, match="compile=True needs a float32 or float64 model"):
        Decoder(tiny_model().to(torch.bfloat16), batch_size=1, compile=True)
    with Decoder(model, batch_size=2, max_len=10) as decoder:
        opened = decoder.nbytes  # the short convolutions' histories; engines come at prefill
        with pytest.raises(ValueError, match="input_ids has batch 1, the decoder batch_size=2"):
            decoder.prefill(ids[:1])
        with pytest.raises(ValueError, match="prompt length 11 exceeds the decoder's max_len"):
            decoder.prefill(torch.zeros(2, 11, dtype=torch.long))
        with pytest.raises(ValueError, match=r"input_ids has token ids in \[0, 32\]"):
            decoder.prefill(torch.tensor([[0, 1], [2, VOCAB]]))
        with pytest.raises(ValueError, match="prompt_lengths must be in"):
            decoder.prefill(ids, [0, 4])
        with pytest.raises(TypeError, match="input_ids must have an integer dtype"):
            decoder.prefill(ids.double())
        assert decoder.positions.tolist() == [0, 0] and decoder.nbytes == opened
        decoder.prefill(ids, [4, 2])
        assert decoder.positions.tolist() == [4, 2]
        with pytest.raises(ValueError, match="ids has 1 tokens for 2 rows"):
            decoder.step(ids[0, :1])
        with pytest.raises(ValueError, match=r"a row is at position 4 .* no room for 7 more"):
            decoder.extend(0, torch.zeros(7, dtype=torch.long))
        with pytest.raises(ValueError, match=r"rows must be ints in \[0, 2\)"):
            decoder.step(ids[0, :1], rows=[5])
        assert decoder.positions.tolist() == [4, 2]
        decoder.prefill(ids)  # every row starts anew
        assert decoder.positions.tolist() == [4, 4]
    assert repr(decoder).startswith("Decoder(batch_size=2, max_len=10, method='continuous'")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_prompts_in_pieces_give_the_same_logits(method, chunk):
    """prefill_chunk bounds a pass by the piece; the outputs are those of one pass."""
    model = tiny_model()
    prompt = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(3))
    outs = []
    for prefill_chunk in (None, chunk):
        with Decoder(
            model, batch_size=2, max_len=30, method=method, prefill_chunk=prefill_chunk
        ) as d:
            out = d.prefill(prompt, prompt_lengths=[19, 11])
            outs.append([out.logits, d.step(out.greedy).logits, d.positions])
    assert rel_err(outs[1][0], outs[0][0]) < 1e-10
    assert rel_err(outs[1][1], outs[0][1]) < 1e-10
    assert outs[1][2].tolist() == outs[0][2].tolist() == [20, 12]


def test_prefill_chunk_must_be_a_positive_int():
    with pytest.raises(ValueError, match="prefill_chunk"):
        Decoder(tiny_model(), batch_size=1, max_len=10, prefill_chunk=0)
