"""Forking rows: ``Decoder.fork``, ``snapshot`` and ``restore`` copy a row's whole decoding state
(engines, short-convolution histories, attention caches, positions) into other rows, which then
go on exactly as the source would, each on its own; a snapshot never changes. Every method,
eager and compiled, convolutional models and hybrids with attention (windowed too) and a modal
one (Evo 1's layout), float64 against the model's forward over each row's own sequence."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill import METHODS, Decoder, generate
from futurefill.pretrained import load_pretrained
from reference import hybrid_lm, rel_err, tiny_lm

VOCAB = 32
EVO1 = Path(__file__).parent / "fixtures" / "evo1_tiny"
KNOBS = {"continuous": {"tile_len": 2}, "deamortized": {"tile_len": 2}, "epoched": {"epoch_len": 3}}


def model_for(mixer: str, seed: int = 0):
    if mixer in ("flash_stu", "striped_hyena"):
        return hybrid_lm(mixer, VOCAB)
    if mixer == "evo1":
        return load_pretrained(EVO1).double()
    return tiny_lm(mixer, seed, max_len=64, vocab=VOCAB)


def check(out, rows, sequences, reference):
    """Each row's logits are the forward's over its own sequence; its greedy token appended."""
    for i, row in enumerate(rows):
        expected = reference(torch.tensor([sequences[row]]))
        expected = getattr(expected, "logits", expected)[0, -1]
        assert rel_err(out.logits[i], expected) < 1e-10, (row, len(sequences[row]))
        sequences[row].append(int(out.greedy[i]))


def run_fork(decoder, reference, rng, vocab, rows=4):
    """Rows 1-3 hold sequences of their own; row 0 takes a prompt (maybe in two pieces) and some
    steps; rows 1 and 3 become its forks and every row then goes on with its own tokens (the
    forks' first token differs from the source's so that they part at once)."""
    sequences = {}
    for row in range(1, rows):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 9))]
        out = decoder.start(row, torch.tensor(prompt))
        sequences[row] = [*prompt]
        check(out, [row], sequences, reference)
    prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 13))]
    cut = rng.randint(1, len(prompt))
    out = decoder.start(0, torch.tensor(prompt[:cut]))
    if cut < len(prompt):
        out = decoder.extend(0, torch.tensor(prompt[cut:]))
    sequences[0] = list(prompt)
    check(out, [0], sequences, reference)
    for _ in range(rng.randint(0, 5)):
        check(decoder.step(torch.tensor([sequences[0][-1]]), [0]), [0], sequences, reference)
    decoder.fork(0, [1, 3])
    assert decoder.positions.tolist()[:4] == [len(sequences[0]) - 1] * 2 + [
        len(sequences[2]) - 1,
        len(sequences[0]) - 1,
    ]
    for offset, row in enumerate((1, 3), start=1):
        sequences[row] = [*sequences[0][:-1], (sequences[0][-1] + offset) % vocab]
    live = [0, 1, 2, 3]
    while max(len(sequences[r]) for r in live) < decoder.max_len:
        rng.shuffle(live)
        out = decoder.step(torch.tensor([sequences[r][-1] for r in live]), live)
        check(out, live, sequences, reference)
    return sequences


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mixer", ["hyena", "stu", "longconv", "flash_stu", "striped_hyena"])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_forks_go_on_as_their_source_would(method, mixer, seed):
    model = model_for(mixer, seed % 3)
    reference = copy.deepcopy(model)
    with Decoder(model, batch_size=4, max_len=24, method=method, **KNOBS.get(method, {})) as dec:
        run_fork(dec, reference, random.Random(seed), VOCAB)


@pytest.mark.parametrize("method", ["modal", "continuous"])
def test_forks_of_a_modal_hybrid(method):
    """Evo 1's layout: complex poles, FIRs of 3 and more taps, rotary attention."""
    model = model_for("evo1")
    reference = copy.deepcopy(model)
    vocab = model.config.vocab_size
    with Decoder(model, batch_size=4, max_len=20, method=method) as dec:
        run_fork(dec, reference, random.Random(method), vocab)


@pytest.mark.parametrize("method", ["continuous", "epoched", "naive"])
def test_compiled_steps_after_a_fork(method):
    model = model_for("hyena", 1)
    reference = copy.deepcopy(model)
    with Decoder(model, batch_size=4, max_len=20, method=method, compile=True) as dec:
        run_fork(dec, reference, random.Random(7), VOCAB)


def test_a_snapshot_is_never_changed_and_restores_any_time():
    model = model_for("striped_hyena")
    reference = copy.deepcopy(model)
    prompt = [3, 1, 4, 1, 5, 9, 2]
    with Decoder(model, batch_size=3, max_len=24, tile_len=2) as dec:
        first = dec.start(0, torch.tensor(prompt))
        saved = dec.snapshot(0)
        kept = copy.deepcopy(saved.states)
        assert saved.position == len(prompt) and 0 < saved.nbytes
        dec.fork(0, [1, 2])
        sequences = {r: [*prompt, r] for r in range(3)}
        for _ in range(8):
            out = dec.step(torch.tensor([sequences[r][-1] for r in range(3)]))
            check(out, range(3), sequences, reference)
        dec.release(1)
        dec.start(1, torch.tensor([7, 7, 7]))  # the rows that held it now hold other things
        dec.restore([2, 1], saved)
        assert dec.positions.tolist() == [len(sequences[0]) - 1, len(prompt), len(prompt)]
        for name, tensors in saved.states.items():
            for a, b in zip(tensors, kept[name], strict=True):
                assert torch.equal(a, b), name
        sequences[1] = [*prompt, int(first.greedy[0])]
        sequences[2] = [*prompt, 5]
        for _ in range(6):
            out = dec.step(torch.tensor([sequences[r][-1] for r in (1, 2)]), [1, 2])
            check(out, (1, 2), sequences, reference)


def test_fork_errors_leave_the_rows_alone():
    model = model_for("hyena")
    with Decoder(model, batch_size=3, max_len=10) as dec:
        dec.start(0, torch.tensor([1, 2, 3]))
        dec.start(2, torch.tensor([4]))
        with pytest.raises(ValueError, match="targets must not hold the source row 0"):
            dec.fork(0, [0, 1])
        with pytest.raises(ValueError, match=r"rows must be ints in \[0, 3\), got \[3\]"):
            dec.fork(0, [3])
        with pytest.raises(ValueError, match=r"rows must be ints in \[0, 3\), got \[5\]"):
            dec.snapshot(5)
        with pytest.raises(ValueError, match="snapshot: restore a RowSnapshot into the session"):
            dec.restore([1], "not a snapshot")
        assert dec.positions.tolist() == [3, 0, 1]
        saved = dec.snapshot(0)
    with Decoder(model, batch_size=3, max_len=10) as other:
        with pytest.raises(ValueError, match="into the session that took it"):
            other.restore([1], saved)
    with pytest.raises(RuntimeError, match="closed"):
        dec.snapshot(0)


@pytest.mark.parametrize("do_sample", [False, True])
@pytest.mark.parametrize("method", ["continuous", "deamortized", "epoched"])
def test_generate_num_return_sequences_equals_repeated_prompts(method, do_sample):
    """One prefill per prompt and forks give exactly the tokens and logits of the prompt
    repeated in the batch (the same draws from the same generator), ragged prompts too."""
    model = model_for("striped_hyena")
    ids = torch.tensor([[5, 3, 9, 1, 4, 4], [2, 8, 0, 0, 0, 0]])
    lengths = [6, 2]
    sampling = {"do_sample": True, "temperature": 1.3, "top_k": 20} if do_sample else {}

    def run(prompts, lengths, **extra):
        generator = torch.Generator().manual_seed(11)
        return generate(
            model,
            prompts,
            9,
            method=method,
            prompt_lengths=lengths,
            generator=generator,
            return_logits=True,
            **sampling,
            **extra,
        )

    forked = run(ids, lengths, num_return_sequences=3)
    repeated = run(ids.repeat_interleave(3, 0), [n for n in lengths for _ in range(3)])
    assert forked.tokens.shape == (6, 9)
    assert torch.equal(forked.tokens, repeated.tokens)
    assert rel_err(forked.logits, repeated.logits) < 1e-12
    if do_sample:
        assert len({tuple(t) for t in forked.tokens[:3].tolist()}) > 1  # they do differ


def test_generate_num_return_sequences_is_checked():
    model = model_for("hyena")
    with pytest.raises(ValueError, match="num_return_sequences must be >= 1, got 0"):
        generate(model, torch.tensor([[1, 2]]), 3, num_return_sequences=0)
    with pytest.raises(TypeError, match="num_return_sequences must be an int"):
        generate(model, torch.tensor([[1, 2]]), 3, num_return_sequences=2.0)


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_forks_on_the_device(method, compiled, device):
    """Forks on the device a test runs on (CUDA where there is one: the GPU check runs these),
    eager and compiled: each row's logits are the forward's over its own sequence."""
    if compiled and method not in ("continuous", "epoched"):
        pytest.skip("compiled forks: two methods suffice here")
    model = hybrid_lm("striped_hyena", VOCAB).to(device)
    reference = copy.deepcopy(model)
    options = dict(method=method, compile=compiled, **KNOBS.get(method, {}))
    sequences = {0: [3, 1, 4, 1, 5]}
    with Decoder(model, batch_size=3, max_len=16, **options) as dec:
        out = dec.start(0, torch.tensor(sequences[0], device=device))
        dec.fork(0, [1, 2])
        first = int(out.greedy[0])
        sequences = {r: [*sequences[0], (first + r) % VOCAB] for r in range(3)}
        for _ in range(8):
            out = dec.step(torch.tensor([sequences[r][-1] for r in range(3)], device=device))
            for r in range(3):
                expected = reference(torch.tensor([sequences[r]], device=device))[0, -1]
                error = (out.logits[r] - expected).abs().max() / expected.abs().max()
                assert float(error) < 1e-10, (r, len(sequences[r]))
                sequences[r].append(int(out.greedy[r]))
