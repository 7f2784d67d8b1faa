"""Decoder rows: rows start, step and are released at any step, each at its own
position and on its own FutureFill schedule, and every row gets exactly the logits of the model's
forward over its own sequence (float64), for every method, eager and compiled."""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill import METHODS, Decoder
from reference import hybrid_lm, rel_err, tiny_lm

VOCAB = 32


def tiny_model(mixer: str = "hyena", seed: int = 0, max_len: int = 64):
    return tiny_lm(mixer, seed, max_len=max_len, vocab=VOCAB)


def run_schedule(decoder: Decoder, model, seed: int, events: int, slots: int) -> int:
    """Random admissions, steps and releases; every logit checked against the forward of
    ``model`` (a copy outside the session) over the row's own sequence. Returns how many rows
    were started."""
    rng = random.Random(seed)
    sequences: dict[int, list[int]] = {}
    started = 0
    for _ in range(events):
        free = [r for r in range(slots) if r not in sequences]
        action = rng.random()
        if free and (action < 0.3 or not sequences):
            row = rng.choice(free)
            prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 9))]
            cut = rng.randint(1, len(prompt))  # the rest fed as a second chunk (chunked prefill)
            out = decoder.start(row, torch.tensor(prompt[:cut]))
            if cut < len(prompt):
                out = decoder.extend(row, torch.tensor(prompt[cut:]))
            sequences[row] = [*prompt, int(out.greedy[0])]
            expected = model(torch.tensor([prompt]))[0, -1]
            assert rel_err(out.logits[0], expected) < 1e-10
            started += 1
        elif sequences and action < 0.4:
            row = rng.choice(sorted(sequences))
            decoder.release(row)
            del sequences[row]
        else:
            live = sorted(r for r, seq in sequences.items() if len(seq) < decoder.session.max_len)
            if not live:
                continue
            rng.shuffle(live)  # any order of rows in the batch
            out = decoder.step(torch.tensor([sequences[r][-1] for r in live]), live)
            for i, row in enumerate(live):
                expected = model(torch.tensor([sequences[row]]))[0, -1]
                assert rel_err(out.logits[i], expected) < 1e-10, (row, len(sequences[row]))
                sequences[row].append(int(out.greedy[i]))
            for row in live:
                assert int(decoder.positions[row]) == len(sequences[row]) - 1
    return started


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), mixer=st.sampled_from(["hyena", "stu", "longconv"]))
def test_rows_at_their_own_positions_match_the_forward(method, seed, mixer):
    model = tiny_model(mixer, seed=seed % 5)
    reference = copy.deepcopy(model)
    options = {"tile_len": 2} if method in ("continuous", "deamortized") else {}
    options = {"epoch_len": 3} if method == "epoched" else options
    with Decoder(model, batch_size=3, max_len=30, method=method, **options) as decoder:
        assert run_schedule(decoder, reference, seed, events=60, slots=3) >= 1


@pytest.mark.parametrize("method", ["continuous", "epoched"])
def test_compiled_rows_match_the_forward(method):
    model = tiny_model("hyena", seed=1)
    reference = copy.deepcopy(model)
    with Decoder(model, batch_size=3, max_len=30, method=method, compile=True) as decoder:
        assert run_schedule(decoder, reference, seed=7, events=50, slots=3) >= 2


@pytest.mark.parametrize("method", ["continuous", "naive"])
def test_compiled_steps_beside_a_row_in_the_middle_of_its_prompt(method):
    """A row that has started and waits (its prompt fed in chunks) while the others take
    compiled steps keeps its state: those steps run eagerly, the next ones compiled again."""
    model = tiny_model("hyena", seed=2)
    reference = copy.deepcopy(model)
    prompt, other = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1]
    with Decoder(model, batch_size=3, max_len=30, method=method, compile=True) as decoder:
        out = decoder.start(1, torch.tensor(other))
        sequence = [*other, int(out.greedy[0])]
        decoder.start(0, torch.tensor(prompt[:3]))  # row 0 waits in the middle of its prompt
        for _ in range(4):
            out = decoder.step(torch.tensor([sequence[-1]]), [1])
            sequence.append(int(out.greedy[0]))
        out = decoder.extend(0, torch.tensor(prompt[3:]))
        expected = reference(torch.tensor([prompt]))[0, -1]
        assert rel_err(out.logits[0], expected) < 1e-10
        out = decoder.step(torch.tensor([int(out.greedy[0]), sequence[-1]]), [0, 1])
        expected = reference(torch.tensor([sequence]))[0, -1]
        assert rel_err(out.logits[1], expected) < 1e-10


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mixer", ["hyena", "stu", "longconv", "flash_stu", "striped_hyena"])
def test_a_prompt_packed_with_the_steps_of_others(method, mixer):
    """step_and_extend: the stepping rows and a prompt's pieces in one forward give each row
    the logits of its own sequence (attention's caches and rotary positions too)."""
    hybrid = mixer in ("flash_stu", "striped_hyena")
    model = hybrid_lm(mixer, VOCAB) if hybrid else tiny_model(mixer, seed=3)
    reference = copy.deepcopy(model)
    rng = random.Random(method + mixer)
    with Decoder(model, batch_size=4, max_len=40, method=method) as decoder:
        sequences = {}
        for row in (0, 3):
            prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 6))]
            sequences[row] = [*prompt, int(decoder.start(row, torch.tensor(prompt)).greedy[0])]
        for _ in range(2):  # row 2's prompt, twice (the second time in a used row)
            prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(2, 17))]
            cuts = sorted(
                {0, len(prompt), *rng.sample(range(1, len(prompt)), min(2, len(prompt) - 1))}
            )
            decoder.release(2)
            for a, b in itertools.pairwise(cuts):
                rows = sorted(sequences)
                ids = torch.tensor([sequences[r][-1] for r in rows])
                steps, piece = decoder.step_and_extend(ids, rows, 2, torch.tensor(prompt[a:b]))
                for i, r in enumerate(rows):
                    expected = reference(torch.tensor([sequences[r]]))[0, -1]
                    assert rel_err(steps.logits[i], expected) < 1e-10, (r, i)
                    sequences[r].append(int(steps.greedy[i]))
                expected = reference(torch.tensor([prompt[:b]]))[0, -1]
                assert rel_err(piece.logits[0], expected) < 1e-10
            assert int(decoder.positions[2]) == len(prompt)
            sequence = [*prompt, int(piece.greedy[0])]
            out = decoder.step(torch.tensor([sequence[-1]]), [2])  # then on its own
            expected = reference(torch.tensor([sequence]))[0, -1]
            assert rel_err(out.logits[0], expected) < 1e-10
        with pytest.raises(ValueError, match="ids has 1 tokens for 2 rows"):
            decoder.step_and_extend(torch.tensor([1]), [0, 3], 2, torch.tensor([1]))
        with pytest.raises(ValueError, match="distinct"):
            decoder.step_and_extend(torch.tensor([1, 2]), [0, 2], 2, torch.tensor([1]))


def test_row_errors_name_the_row_and_leave_others_alone():
    model = tiny_model()
    with Decoder(model, batch_size=2, max_len=10) as decoder:
        decoder.start(0, torch.tensor([1, 2, 3]))
        with pytest.raises(ValueError, match=r"rows must be ints in \[0, 2\), got \[2\]"):
            decoder.start(2, torch.tensor([1]))
        with pytest.raises(ValueError, match="prompt length 11 exceeds the decoder's max_len 10"):
            decoder.start(1, torch.zeros(11, dtype=torch.long))
        with pytest.raises(ValueError, match="rows must be distinct"):
            decoder.step(torch.tensor([1, 1]), [0, 0])
        with pytest.raises(ValueError, match="ids has 1 tokens for 2 rows"):
            decoder.step(torch.tensor([1]))
        assert decoder.positions.tolist() == [3, 0]


def test_a_compiled_decoder_does_not_pack_and_says_so():
    model = tiny_model()
    with Decoder(model, batch_size=2, max_len=10, compile=True) as decoder:
        assert not decoder.packs
        decoder.start(0, torch.tensor([1, 2, 3]))
        with pytest.raises(ValueError, match="a compiled decoder steps through its graph"):
            decoder.step_and_extend(torch.tensor([1]), [0], 1, torch.tensor([4, 5]))
        assert decoder.positions.tolist() == [3, 0]
    with Decoder(model, batch_size=2, max_len=10) as decoder:
        assert decoder.packs
