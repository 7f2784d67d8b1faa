"""generate(): the tokens the parallel forward implies, for every engine, ragged batches, eos,
sampling, streaming, and clear errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill import METHODS, ConvLM, ConvLMConfig, GenerationOutput, generate
from futurefill.generation import select_next_tokens
from futurefill.model import MIXERS
from futurefill.online import deamortized
from reference import rel_err

VOCAB, MAX_LEN = 32, 48


def tiny_model(
    mixer: str = "stu_tensordot", dtype=torch.float64, seed: int = 0, max_len: int = MAX_LEN
) -> ConvLM:
    torch.manual_seed(seed)
    config = ConvLMConfig(
        vocab_size=VOCAB,
        d_model=8,
        n_layers=2,
        max_len=max_len,
        mixer=mixer,
        mlp_ratio=2,
        num_eigh=6,
        hyena_filter_order=8,
        hyena_emb_dim=5,
        tie_embeddings=False,
    )
    model = ConvLM(config).to(dtype)
    with torch.no_grad():  # unit-scale, untied: varied tokens (not a copy of the last one)
        model.embed.weight.normal_()
        model.head.weight.normal_()
    return model


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def greedy_by_forward(model: ConvLM, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Reference: re-run the whole parallel forward for every token. prompt (1, P) -> (n,)."""
    seq = prompt
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq[0, prompt.shape[1] :]


@pytest.mark.parametrize("mixer", MIXERS)
def test_greedy_is_what_forward_implies_for_every_engine(mixer, device):
    model = tiny_model(mixer).to(device)
    ids = random_ids(2, 6).to(device)
    expected = torch.stack([greedy_by_forward(model, ids[b : b + 1], 30) for b in range(2)])
    assert len(set(expected.flatten().tolist())) > 3  # a non-trivial sequence
    for method in METHODS:
        tokens = generate(model, ids, 30, method=method)
        assert tokens.dtype == torch.long and tokens.shape == (2, 30)
        assert torch.equal(tokens, expected), method


def test_greedy_in_float32_for_every_engine():
    model = tiny_model("hyena", torch.float32)
    ids = random_ids(1, 5)
    expected = greedy_by_forward(model, ids, 20)
    for method in METHODS:
        assert torch.equal(generate(model, ids, 20, method=method)[0], expected)


@pytest.mark.parametrize("mixer", MIXERS)
def test_ragged_batch_equals_each_sequence_alone(mixer, device):
    model = tiny_model(mixer).to(device)
    lengths = [9, 2, 5, 9]
    ids = random_ids(4, 9).to(device)
    ids[1, 2:] = 31  # padding is never read: any value
    batched = generate(model, ids, 15, prompt_lengths=lengths, method="continuous")
    for b, length in enumerate(lengths):
        alone = generate(model, ids[b : b + 1, :length], 15, method="naive")
        assert torch.equal(batched[b], alone[0]), b


@settings(max_examples=12)
@given(
    lengths=st.lists(st.integers(1, 10), min_size=1, max_size=4),
    new=st.integers(1, 12),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 2**16),
)
def test_ragged_batch_random(lengths, new, method, seed):
    model = tiny_model("longconv", seed=seed % 4)
    ids = random_ids(len(lengths), max(lengths) + 2, seed)
    out = generate(
        model, ids, new, prompt_lengths=torch.tensor(lengths), method=method, return_logits=True
    )
    for b, length in enumerate(lengths):
        prompt = ids[b : b + 1, :length]
        assert torch.equal(out.tokens[b], greedy_by_forward(model, prompt, new)), b
        with torch.no_grad():
            full = model(torch.cat([prompt[0], out.tokens[b]]).unsqueeze(0))[0]
        assert rel_err(out.logits[b], full[length - 1 : length - 1 + new]) < 1e-9


def test_returned_logits_are_the_forward_logits(device):
    model = tiny_model("stu").to(device)
    ids = random_ids(2, 7).to(device)
    out = generate(model, ids, 12, return_logits=True)
    assert isinstance(out, GenerationOutput)
    assert out.logits.shape == (2, 12, VOCAB) and out.logits.dtype == torch.float64
    with torch.no_grad():
        full = model(torch.cat([ids, out.tokens], dim=1))
    assert rel_err(out.logits, full[:, 6:18]) < 1e-9
    assert torch.equal(out.logits.argmax(-1), out.tokens)


def test_eos_stops_a_sequence_and_pads_it():
    model = tiny_model("hyena")
    ids = random_ids(3, 6)
    free = generate(model, ids, 20)
    eos = int(free[0, 4])
    first = int((free[0] == eos).nonzero()[0])  # eos may already appear before index 4
    out = generate(model, ids, 20, eos_token_id=eos, pad_token_id=-1, return_logits=True)
    assert torch.equal(out.tokens[0, : first + 1], free[0, : first + 1])
    assert (out.tokens[0, first + 1 :] == -1).all()
    assert torch.isnan(out.logits[0, first + 1 :]).all()
    assert not torch.isnan(out.logits[0, : first + 1]).any()
    for b in (1, 2):  # the other sequences: unchanged up to their own eos
        hits = (free[b] == eos).nonzero()
        stop = int(hits[0]) + 1 if len(hits) else 20
        assert torch.equal(out.tokens[b, :stop], free[b, :stop])
        assert (out.tokens[b, stop:] == -1).all()


def test_eos_pads_with_eos_by_default_and_stops_early():
    model = tiny_model("longconv")
    ids = random_ids(1, 4)
    free = generate(model, ids, 25)
    eos = int(free[0, 2])
    first = int((free[0] == eos).nonzero()[0])
    calls = []
    tokens = generate(model, ids, 25, eos_token_id=eos, streamer=calls.append)
    assert len(calls) == first + 1  # generation ended as soon as the only sequence stopped
    assert torch.equal(tokens[0, : first + 1], free[0, : first + 1])
    assert (tokens[0, first + 1 :] == eos).all()


def test_eos_in_the_prompt_does_not_stop_a_sequence():
    model = tiny_model("stu_tensordot")
    ids = random_ids(2, 8)
    lengths = [8, 3]
    eos = int(ids[0, 5])  # inside prompt 0; sequence 1 reads position 5 as generated
    free = generate(model, ids, 10, prompt_lengths=lengths)
    out = generate(model, ids, 10, prompt_lengths=lengths, eos_token_id=eos, pad_token_id=-7)
    hits = (free[0] == eos).nonzero()
    stop = int(hits[0]) + 1 if len(hits) else 10
    assert torch.equal(out[0, :stop], free[0, :stop])


def test_streamer_gets_every_new_token_batch():
    model = tiny_model("stu_tensordot")
    ids = random_ids(2, 5)
    calls = []
    tokens = generate(model, ids, 9, streamer=calls.append)
    assert len(calls) == 9 and all(c.shape == (2,) for c in calls)
    assert torch.equal(torch.stack(calls, dim=1), tokens)


def test_streamer_object_and_ragged_batches():
    class Streamer:
        def __init__(self):
            self.puts, self.ended = [], 0

        def put(self, value):
            self.puts.append(value.clone())

        def end(self):
            self.ended += 1

    model = tiny_model("stu_tensordot")
    streamer = Streamer()
    tokens = generate(model, random_ids(2, 6), 4, prompt_lengths=[6, 3], streamer=streamer)
    assert streamer.ended == 1
    streamed = torch.stack(streamer.puts, dim=1)  # one call per step: both sequences generate
    assert torch.equal(streamed, tokens)


class CountingModel(torch.nn.Module):
    """A model wrapper that records the length of every chunk it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.chunks = model, []

    def forward(self, ids):
        self.chunks.append(ids.shape[1])
        return self.model(ids)


@pytest.mark.parametrize("mixer", MIXERS)
@pytest.mark.parametrize("method", METHODS)
def test_ragged_prompts_are_prefilled_each_alone_and_get_their_tokens_alone(mixer, method):
    model = tiny_model(mixer, max_len=80)
    lengths = [1, 17, 64]
    ids = random_ids(3, 64, seed=5)
    counting = CountingModel(model)
    out = generate(counting, ids, 10, prompt_lengths=lengths, method=method, return_logits=True)
    assert counting.chunks == [1, 17, 64] + [1] * 9  # each prompt alone, then the steps
    for b, length in enumerate(lengths):
        prompt = ids[b : b + 1, :length]
        alone = generate(model, prompt, 10, method="naive", return_logits=True)
        assert torch.equal(out.tokens[b], alone.tokens[0]), (b, length)
        assert rel_err(out.logits[b], alone.logits[0]) < 1e-9


def test_padding_reaches_no_convolution():
    """What the padding holds does not matter: not its ids, not the model's outputs there."""
    model = tiny_model("hyena")
    ids = random_ids(2, 12, seed=9)
    other = ids.clone()
    other[1, 5:] = (other[1, 5:] + 7) % 256  # only the padding of sequence 1 changes
    first = generate(model, ids, 8, prompt_lengths=[12, 5], return_logits=True)
    second = generate(model, other, 8, prompt_lengths=[12, 5], return_logits=True)
    assert torch.equal(first.tokens, second.tokens)
    assert torch.equal(first.logits, second.logits)


def test_sampling_is_reproducible_with_a_generator():
    model = tiny_model("longconv")
    ids = random_ids(3, 4)

    def sample(seed, method="continuous", **options):
        gen = torch.Generator().manual_seed(seed)
        return generate(model, ids, 25, do_sample=True, generator=gen, method=method, **options)

    first = sample(0)
    assert torch.equal(sample(0), first)
    assert torch.equal(sample(0, "naive"), first)  # same draws, same logits to rounding
    assert not torch.equal(sample(1), first)
    assert not torch.equal(first, generate(model, ids, 25))  # sampling, not greedy
    greedy = generate(model, ids, 25)
    assert torch.equal(sample(5, top_k=1), greedy)
    assert torch.equal(sample(5, top_p=1e-9), greedy)
    assert torch.equal(generate(model, ids, 25, temperature=0.0), greedy)
    unused = torch.Generator().manual_seed(3)
    assert torch.equal(generate(model, ids, 25, do_sample=False, generator=unused), greedy)


def test_select_next_tokens_restricts_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]])).expand(4000, 4)
    gen = torch.Generator().manual_seed(0)

    def draw(**options):
        return select_next_tokens(logits, do_sample=True, generator=gen, **options)

    counts = torch.bincount(draw(), minlength=4) / 4000
    assert torch.allclose(counts, torch.tensor([0.5, 0.05, 0.3, 0.15]), atol=0.03)
    assert set(draw(top_k=2).tolist()) == {0, 2}
    assert set(draw(top_p=0.75).tolist()) == {0, 2}  # 0.5 < 0.75 <= 0.8
    assert set(draw(top_p=0.81).tolist()) == {0, 2, 3}
    cold = torch.bincount(draw(temperature=0.25), minlength=4) / 4000
    assert cold[0] > 0.85  # (0.5 / 0.3)^4 ~ 7.7 times token 2
    assert torch.equal(select_next_tokens(logits[:2], do_sample=False), torch.tensor([0, 0]))


def sampling_distribution(
    logits: list[float], temperature: float, top_k: int | None, top_p: float | None
) -> list[float]:
    """Reference, by hand in float64: softmax(logits / temperature), restricted to the top_k
    largest (ties with the k-th kept) and renormalised, then to the most likely tokens until
    their mass reaches top_p (a token is kept while the mass before it is below top_p)."""
    scores = [x / temperature for x in logits]
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    if top_k is not None:
        kth = sorted(scores, reverse=True)[top_k - 1]
        weights = [w if s >= kth else 0.0 for w, s in zip(weights, scores, strict=True)]
    probs = [w / sum(weights) for w in weights]
    if top_p is not None:
        kept, before = set(), 0.0
        for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
            if probs[i] == 0.0 or before >= top_p:
                break
            kept.add(i)
            before += probs[i]
        probs = [q if i in kept else 0.0 for i, q in enumerate(probs)]
        probs = [q / sum(probs) for q in probs]
    return probs


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(0.5, None, 0.75), (2.0, None, 0.75), (0.5, None, 0.9), (0.5, 3, 0.8), (2.0, 5, 0.75)],
)
def test_sampling_applies_the_temperature_before_top_k_and_top_p(temperature, top_k, top_p):
    """The nucleus is taken from softmax(logits / temperature), not from softmax(logits): in every
    case here the two nuclei differ (by one token or more, every cumulative mass at least 0.03
    from top_p), so exactly the reference's tokens must be drawn, at its frequencies. Two rows
    with different logits, each its own distribution."""
    probs = [0.35, 0.25, 0.18, 0.12, 0.07, 0.03]
    rows = [[math.log(p) for p in probs], [math.log(p) for p in reversed(probs)]]
    draws_per_row = 4000
    logits = torch.tensor(rows, dtype=torch.float64).repeat_interleave(draws_per_row, dim=0)
    gen = torch.Generator().manual_seed(0)
    tokens = select_next_tokens(
        logits, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen
    ).view(len(rows), draws_per_row)
    for row, row_logits in enumerate(rows):
        expected = sampling_distribution(row_logits, temperature, top_k, top_p)
        at_one = sampling_distribution(row_logits, 1.0, top_k, top_p)
        support = {i for i, q in enumerate(expected) if q > 0}
        assert support != {i for i, q in enumerate(at_one) if q > 0}  # the case tells them apart
        assert set(tokens[row].tolist()) == support, (row, expected)
        counts = torch.bincount(tokens[row], minlength=len(probs)) / draws_per_row
        # 4000 draws: a frequency's standard deviation is below 0.008
        expected = torch.tensor(expected, dtype=torch.float64)
        assert torch.allclose(counts.double(), expected, rtol=0, atol=0.03), row


def test_zero_new_tokens():
    model = tiny_model("longconv")
    assert generate(model, random_ids(2, 3), 0).shape == (2, 0)
    out = generate(model, random_ids(2, 3), 0, return_logits=True)
    assert out.tokens.shape == (2, 0) and out.logits.shape == (2, 0, VOCAB)


def test_whole_length_can_be_used():
    model = tiny_model("longconv")
    tokens = generate(model, random_ids(1, 8), MAX_LEN - 8)
    assert tokens.shape == (1, MAX_LEN - 8)


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_ids": torch.zeros(2, 3)}, TypeError, "integer dtype"),
        ({"input_ids": torch.zeros(2, 3, dtype=torch.bool)}, TypeError, "integer dtype"),
        ({"input_ids": [[1, 2]]}, TypeError, "must be a torch.Tensor"),
        ({"input_ids": torch.tensor([1, 2])}, ValueError, r"shape \(batch, length\)"),
        ({"input_ids": torch.tensor([[1, 32]])}, ValueError, r"vocabulary \[0, 32\)"),
        ({"input_ids": torch.tensor([[-1, 3]])}, ValueError, "vocabulary"),
        ({"max_new_tokens": 45}, ValueError, "exceeds the model's max_len 48"),
        ({"max_new_tokens": -1}, ValueError, "max_new_tokens must be >= 0"),
        ({"max_new_tokens": 2.0}, TypeError, "max_new_tokens must be an int"),
        ({"prompt_lengths": [4]}, ValueError, "1 entries, input_ids has batch 2"),
        ({"prompt_lengths": [4, 0]}, ValueError, r"in \[1, input_ids.shape\[1\]=4\]"),
        ({"prompt_lengths": [4, 5]}, ValueError, r"in \[1, input_ids.shape\[1\]=4\]"),
        ({"prompt_lengths": torch.tensor([4.0, 2.0])}, TypeError, "must be integers"),
        ({"prompt_lengths": torch.tensor([[4, 2]])}, ValueError, "must be 1-D"),
        ({"prompt_lengths": [4, 2.5]}, TypeError, "must hold ints"),
        ({"temperature": -1.0}, ValueError, "temperature must be >= 0"),
        ({"top_k": 0}, ValueError, "top_k must be >= 1"),
        ({"top_p": 0.0}, ValueError, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, ValueError, r"top_p must be in \(0, 1\]"),
        ({"do_sample": True, "temperature": 0.0}, ValueError, "needs temperature > 0"),
        ({"do_sample": False, "top_k": 3}, ValueError, "top_k shape sampling, which needs"),
        ({"temperature": 0.7}, ValueError, "temperature shape sampling, which needs do_sample"),
        ({"do_sample": 1}, TypeError, "do_sample must be a bool"),
        ({"suppress_token_ids": [32]}, ValueError, r"suppress_token_ids \[32\] are outside"),
        ({"allowed_token_ids": [-1]}, ValueError, "allowed_token_ids must be >= 0"),
        ({"suppress_token_ids": range(32)}, ValueError, "leave no token to choose"),
        ({"generator": 3}, TypeError, "torch.Generator"),
        ({"eos_token_id": 32}, ValueError, r"eos_token_id 32 is outside the vocabulary"),
        ({"streamer": 3}, TypeError, "streamer must be callable"),
        ({"method": "fastest"}, ValueError, "unknown method"),
        ({"tile": 4}, TypeError, r"generate\(\) got an unexpected keyword argument 'tile'"),
        ({"method": "naive", "tile_len": 4}, ValueError, "tile_len applies"),
        ({"tile_len": 3}, ValueError, "tile_len must be a positive power of two"),
        ({"epoch_len": 0, "method": "epoched"}, ValueError, "epoch_len must be >= 1"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs, error, match):
    model = tiny_model("longconv")
    args = {"input_ids": random_ids(2, 4), "max_new_tokens": 5, **kwargs}
    with pytest.raises(error, match=match):
        generate(model, **args)


def test_a_model_without_futurefill_nn_is_rejected():
    model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 4), torch.nn.Linear(4, VOCAB))
    with pytest.raises(ValueError, match=r"has no futurefill\.nn modules"):
        generate(model, random_ids(1, 3), 2)


def test_a_model_not_returning_logits_is_rejected():
    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = tiny_model("longconv")

        def forward(self, ids):
            return self.model(ids)[..., 0]  # (batch, length)

    with pytest.raises(TypeError, match=r"logits \(batch, length, vocab_size\)"):
        generate(Features(), random_ids(1, 3), 2)


def test_prompt_padding_may_hold_any_value():
    model = tiny_model("longconv")
    ids = random_ids(2, 4)
    padded = ids.clone()
    padded[1, 2:] = -100
    assert torch.equal(
        generate(model, padded, 5, prompt_lengths=[4, 2]),
        generate(model, ids, 5, prompt_lengths=[4, 2]),
    )


@pytest.mark.parametrize("slice_points", [8, 1 << 16])
def test_deamortized_jobs_run_under_generates_inference_mode(monkeypatch, slice_points):
    """generate() decodes in inference mode; the deamortized engine's background jobs write into
    its buffers from another thread, which must be allowed too. Every job in the background
    (none small enough to run at once), in four-step passes of a few points or whole."""
    monkeypatch.setattr(deamortized, "SMALL_JOB_POINTS", 0)
    monkeypatch.setattr(deamortized, "SLICE_POINTS", slice_points)
    model = tiny_model("longconv")
    ids = random_ids(2, 5)
    got = generate(model, ids, 40, method="deamortized", tile_len=1, return_logits=True)
    expected = generate(model, ids, 40, method="continuous", tile_len=1, return_logits=True)
    assert torch.equal(got.tokens, expected.tokens)
    assert torch.allclose(got.logits, expected.logits, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_methods_agree_to_the_dtypes_rounding(dtype):
    """What holds in half precision (every method computes in float32, every layer's output is
    rounded to the half dtype, and the methods sum in different orders): each method's logits
    are the float64 forward's over its own tokens to the dtype's tolerance, and two methods'
    tokens part only at a step where the float64 logits' two largest are within it (a tie at
    that precision)."""
    from futurefill.testing import default_rtol

    model = tiny_model("hyena", dtype=torch.float32, seed=3)
    reference = copy.deepcopy(model).double()
    model = model.to(dtype)
    ids = torch.randint(0, VOCAB, (3, 6), generator=torch.Generator().manual_seed(3))
    runs = {m: generate(model, ids, 30, method=m, return_logits=True) for m in METHODS}
    for method, run in runs.items():
        expected = reference(torch.cat([ids, run.tokens], dim=1))[:, 5:-1]
        scale = float(expected.abs().max())
        error = float((run.logits.double() - expected).abs().max())
        assert error <= default_rtol(dtype) * scale, method
    base = runs["naive"].tokens
    for method, run in runs.items():
        for row in range(3):
            differs = (run.tokens[row] != base[row]).nonzero()
            if len(differs):
                i = int(differs[0])
                before = torch.cat([ids[row], base[row, :i]])[None]
                top2 = reference(before)[0, -1].topk(2).values
                gap = float(top2[0] - top2[1])
                assert gap <= default_rtol(dtype) * scale, (method, row, i, gap)


@pytest.mark.parametrize("do_sample", [False, True])
def test_suppressed_and_allowed_tokens_are_never_chosen(do_sample):
    model = tiny_model("longconv")
    ids = random_ids(3, 4)
    options = {"do_sample": do_sample, "generator": torch.Generator().manual_seed(0)}
    free = generate(model, ids, 30, **options)
    common = torch.bincount(free.flatten(), minlength=VOCAB).topk(3).indices.tolist()
    suppressed = generate(model, ids, 30, suppress_token_ids=common, **options)
    assert not set(suppressed.flatten().tolist()) & set(common)
    allowed = [1, 5, 9]
    only = generate(model, ids, 30, allowed_token_ids=allowed, **options)
    assert set(only.flatten().tolist()) <= set(allowed)
    if not do_sample:  # greedy among the allowed: the argmax of the allowed logits
        out = generate(model, ids, 1, allowed_token_ids=allowed, return_logits=True)
        assert torch.equal(
            out.tokens[:, 0], torch.tensor(allowed)[out.logits[:, 0, allowed].argmax(-1)]
        )


@pytest.mark.parametrize("streamed", [False, True])
def test_non_finite_logits_are_an_error_naming_the_first_position(streamed):
    model = tiny_model("longconv")
    ids = random_ids(2, 4)
    put = []
    with torch.no_grad():
        model.head.weight[3, 0] = float("nan")  # NaN logits from the first token on
    with pytest.raises(
        ValueError,
        match=r"not finite \(NaN or inf\) for sequence 0 at generated token 0 \(position 3\)",
    ):
        generate(model, ids, 5, streamer=put.append if streamed else None)
    assert put == []  # before any output


def test_logits_that_turn_non_finite_later_are_found_without_a_sync_per_step():
    model = tiny_model("longconv")
    for seed in range(50):  # a run whose third token of sequence 1 is new to both sequences
        ids = random_ids(2, 4, seed=seed)
        tokens = generate(model, ids, 6)
        bad = int(tokens[1, 2])
        earlier = {*ids.flatten().tolist(), *tokens[:, :2].flatten().tolist(), int(tokens[0, 2])}
        if bad not in earlier:
            break
    with torch.no_grad():
        model.embed.weight[bad] = float("inf")  # its logits, at the next token, are NaN
    with pytest.raises(ValueError, match=r"sequence 1 at generated token 3 \(position 6\)"):
        generate(model, ids, 6)


def test_a_row_that_ends_leaves_the_batch():
    model = tiny_model("longconv")
    ids = random_ids(3, 4, seed=2)
    free = generate(model, ids, 8)
    eos = int(free[1, 2])  # sequence 1 ends at its third token (others may too)
    ends = [int((row == eos).nonzero()[0]) if (row == eos).any() else 8 for row in free]
    batches = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            batches.append(x.shape[0])
            return self.model(x)

    out = generate(Counting(), ids, 8, eos_token_id=eos)
    steps = batches[3:]  # after the three prompts, each prefilled alone
    assert steps == [sum(end > i for end in ends) for i in range(len(steps))]
    assert steps[-1] < 3
    for row, end in enumerate(ends):
        assert torch.equal(out[row, : end + 1], free[row, : end + 1])
        assert (out[row, end + 1 :] == eos).all()
