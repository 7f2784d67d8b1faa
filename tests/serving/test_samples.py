"""Many samples of one prompt, log-probabilities, echo and the prefix cache in the scheduler:
each of ``n`` samples (one prefill, forked) gets exactly what it would get alone with its seed
(``seed + i``), for every method; ``best_of`` keeps the ``n`` most likely; ``token_logprobs``,
``top_logprobs`` and the echoed prompt's log-probabilities are ``log_softmax`` of the model's
forward (a float64 model, 1e-9); ``max_tokens`` 0 scores the prompt alone; a prompt found in
the prefix cache gives the tokens a prefill gives, and its saved state never changes."""

from __future__ import annotations

import copy
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from futurefill import METHODS, generate
from futurefill.pretrained.tokenizers import ByteTokenizer
from futurefill.serving import Metrics, Request, Sampling, Scheduler
from reference import tiny_lm

TOKENIZER = ByteTokenizer()


@pytest.fixture(scope="module")
def model():
    """A float64 byte-level model (logprobs are compared at 1e-9)."""
    return tiny_lm("hyena", seed=3, max_len=64, vocab=256)


def alone(model, request: Request, index: int) -> list[int]:
    """What generate() gives sample ``index`` of ``request`` by itself."""
    sampling = request.sampling
    options = {}
    if sampling.temperature > 0:
        generator = torch.Generator().manual_seed(sampling.seed + index)
        options = dict(
            do_sample=True,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            generator=generator,
        )
    ids = torch.tensor([request.prompt_ids])
    return generate(model, ids, request.max_tokens, **options)[0].tolist()


def forward_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log_softmax of the model's forward over ``ids``: ``(len(ids), vocab)``, float64."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)


def scheduler_for(model, **options) -> Scheduler:
    options = {"slots": 6, "max_len": 48, **options}
    return Scheduler(copy.deepcopy(model), TOKENIZER, **options)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_sample_gets_what_it_would_get_alone(model, method):
    """Two requests at once, their prompts in pieces beside each other's steps."""
    scheduler = scheduler_for(model, method=method, prefill_chunk=4).start()
    sampled = Request(
        TOKENIZER.encode("def fork(x):"), 12, Sampling(temperature=1.1, top_k=30, seed=7), n=4
    )
    greedy = Request(TOKENIZER.encode("abc"), 9, n=2)
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(lambda r: scheduler.complete(r, timeout=120), [sampled, greedy])
            )
    finally:
        scheduler.stop()
    for request, completions in zip((sampled, greedy), results, strict=True):
        assert [c.index for c in completions] == list(range(request.n))
        for completion in completions:
            assert completion.tokens == alone(model, request, completion.index), method
    assert len({tuple(c.tokens) for c in results[0]}) > 1  # the seeds differ


def test_logprobs_are_the_forwards_and_the_top_ones_the_largest(model):
    scheduler = scheduler_for(model).start()
    try:
        prompt = TOKENIZER.encode("The with")
        request = Request(prompt, 10, Sampling(temperature=0.9, seed=3), n=2, logprobs=3)
        completions = scheduler.complete(request, timeout=120)
    finally:
        scheduler.stop()
    for completion in completions:
        tokens, logprobs = completion.tokens, completion.logprobs
        expected = forward_logprobs(model, prompt + tokens)[len(prompt) - 1 : -1]  # (10, vocab)
        assert len(logprobs) == len(tokens) == 10
        cumulative = 0.0
        for t, token in enumerate(tokens):
            assert logprobs.tokens[t] == TOKENIZER.token_string(token)
            assert math.isclose(logprobs.token_logprobs[t], expected[t, token], abs_tol=1e-9)
            cumulative += float(expected[t, token])
            top = logprobs.top_logprobs[t]
            largest = torch.topk(expected[t], 3)
            want = {TOKENIZER.token_string(int(i)): float(v) for v, i in zip(*largest, strict=True)}
            want.setdefault(logprobs.tokens[t], float(expected[t, token]))
            assert top.keys() == want.keys()
            assert all(math.isclose(top[k], want[k], abs_tol=1e-9) for k in want)
        assert math.isclose(completion.cumulative_logprob, cumulative, abs_tol=1e-8)
        text = completion.text  # offsets point at each ASCII token's text (after ASCII: a lone
        for offset, token, before in zip(logprobs.text_offset, tokens, [0, *tokens], strict=False):
            if token < 128 and before < 128:  # byte >= 128 decodes with the next one)
                assert text[offset] == chr(token)


def test_best_of_keeps_the_most_likely_samples(model):
    scheduler = scheduler_for(model).start()
    try:
        prompt = TOKENIZER.encode("x = ")
        sampling = Sampling(temperature=1.5, seed=11)
        every = scheduler.complete(Request(prompt, 8, sampling, n=5, logprobs=0), timeout=120)
        best = scheduler.complete(Request(prompt, 8, sampling, n=2, best_of=5), timeout=120)
    finally:
        scheduler.stop()
    ranked = sorted(every, key=lambda c: -c.cumulative_logprob)
    assert [c.tokens for c in best] == [c.tokens for c in ranked[:2]]
    assert [c.index for c in best] == [0, 1] and best[0].logprobs is None


def test_echo_scores_the_prompt_and_max_tokens_0_decodes_nothing(model):
    scheduler = scheduler_for(model, prefill_chunk=3).start()
    try:
        prompt = TOKENIZER.encode("import os, sys")
        running = scheduler.submit(Request(TOKENIZER.encode("z"), 40))  # chunks while it steps
        (scored,) = scheduler.complete(Request(prompt, 0, echo=True, logprobs=2), timeout=120)
        (plain,) = scheduler.complete(Request(prompt, 0, echo=True), timeout=120)
        echoed = scheduler.complete(Request(prompt, 3, echo=True, logprobs=1, n=2), timeout=120)
        running.cancel()
    finally:
        scheduler.stop()
    expected = forward_logprobs(model, prompt)
    assert scored.text == plain.text == "import os, sys"
    assert scored.tokens == [] and scored.finish_reason == "length" and plain.logprobs is None
    assert scored.logprobs.token_logprobs[0] is None and scored.logprobs.top_logprobs[0] is None
    for i in range(1, len(prompt)):
        got = scored.logprobs.token_logprobs[i]
        assert math.isclose(got, expected[i - 1, prompt[i]], abs_tol=1e-9), i
        assert len(scored.logprobs.top_logprobs[i]) in (2, 3)
    assert scored.logprobs.text_offset == list(range(len(prompt)))
    for completion in echoed:
        assert completion.text.startswith("import os, sys") and len(completion.tokens) == 3
        lp = completion.logprobs
        assert lp.tokens[: len(prompt)] == scored.logprobs.tokens
        assert lp.token_logprobs[: len(prompt)] == scored.logprobs.token_logprobs
        assert lp.text_offset[len(prompt)] == len(prompt)


def test_a_prefix_cache_hit_gives_the_tokens_of_a_prefill_and_keeps_its_state(model):
    metrics = Metrics()
    scheduler = scheduler_for(model, metrics=metrics, prefill_chunk=5).start()
    try:
        prompt = TOKENIZER.encode("class Fork(Base):")
        request = Request(prompt, 10, Sampling(temperature=0.8, seed=2), n=3)
        first = scheduler.complete(request, timeout=120)
        assert len(scheduler.prefix_cache) == 1
        (entry,) = scheduler.prefix_cache._entries.values()
        kept = copy.deepcopy(entry.snapshot.states)
        again = scheduler.complete(copy.copy(request), timeout=120)
        third = scheduler.complete(Request(prompt, 10, Sampling(temperature=0.8, seed=3), n=2))
    finally:
        scheduler.stop()
    assert [c.tokens for c in again] == [c.tokens for c in first]
    assert third[0].tokens == first[1].tokens  # seed 3 = seed 2 + 1
    for name, tensors in entry.snapshot.states.items():
        for a, b in zip(tensors, kept[name], strict=True):
            assert torch.equal(a, b), name
    lookups = metrics.prefix_cache_lookups
    assert lookups.labels(result="hit")._value.get() == 2
    assert lookups.labels(result="miss")._value.get() == 1


def test_a_small_prefix_cache_evicts_and_never_fails(model):
    scheduler = scheduler_for(model, prefix_cache_bytes=1).start()  # nothing fits
    try:
        prompts = [TOKENIZER.encode(f"prompt {i}") for i in range(4)]
        for prompt in prompts:
            (done,) = scheduler.complete(Request(prompt, 4), timeout=120)
            assert done.tokens == alone(model, Request(prompt, 4), 0)
        assert len(scheduler.prefix_cache) == 0
    finally:
        scheduler.stop()
    scheduler = scheduler_for(model).start()
    try:
        sizes = []
        for prompt in prompts:
            scheduler.complete(Request(prompt, 4), timeout=120)
            sizes.append(scheduler.prefix_cache.nbytes)
        one = sizes[0]
    finally:
        scheduler.stop()
    scheduler = scheduler_for(model, prefix_cache_bytes=2 * one + one // 2).start()
    try:
        for prompt in prompts:  # room for two: the oldest go
            scheduler.complete(Request(prompt, 4), timeout=120)
        assert len(scheduler.prefix_cache) == 2
        assert scheduler.prefix_cache.get(prompts[0]) is None
        assert scheduler.prefix_cache.get(prompts[3]) is not None
    finally:
        scheduler.stop()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n": 0}, "n: must be >= 1"),
        ({"n": 7}, "n: 7 samples exceed the server's 6 slots"),
        ({"n": 2, "best_of": 1}, r"best_of: must be >= n \(2\)"),
        ({"best_of": 8}, "best_of: 8 samples exceed"),
        ({"logprobs": 21}, r"logprobs: must be in \[0, 20\]"),
        ({"max_tokens": -1}, "max_tokens: must be >= 0"),
        ({"prompt_ids": [1] * 49, "max_tokens": 0}, "prompt: its 49 tokens exceed"),
    ],
)
def test_bad_requests_name_the_field(model, changes, message):
    scheduler = scheduler_for(model)
    try:
        request = Request(**{"prompt_ids": [1, 2], "max_tokens": 3, **changes})
        with pytest.raises(ValueError, match=message):
            scheduler.submit(request)
        assert scheduler.queue_length == 0
    finally:
        scheduler.stop()


def test_samples_of_a_compiled_scheduler(model):
    scheduler = scheduler_for(model, compile=True).start()
    try:
        request = Request(TOKENIZER.encode("for i in"), 10, Sampling(temperature=0.9, seed=4), n=3)
        completions = scheduler.complete(request, timeout=300)
    finally:
        scheduler.stop()
    for completion in completions:
        assert completion.tokens == alone(model, request, completion.index)


def test_samples_of_a_modal_hybrid():
    """Evo 1's layout (complex poles, FIRs, rotary attention) with method modal."""
    from pathlib import Path

    from futurefill.pretrained import load_pretrained
    from futurefill.pretrained.tokenizers import CharTokenizer

    evo = load_pretrained(Path(__file__).parent.parent / "fixtures" / "evo1_tiny").double()
    reference = copy.deepcopy(evo)
    scheduler = Scheduler(evo, CharTokenizer(), slots=3, max_len=32, method="modal").start()
    try:
        request = Request(CharTokenizer().encode("ACGTTGCA"), 8, Sampling(1.0, seed=9), n=3)
        completions = scheduler.complete(request, timeout=300)
    finally:
        scheduler.stop()
    for completion in completions:
        generator = torch.Generator().manual_seed(9 + completion.index)
        ids = torch.tensor([request.prompt_ids])
        expected = generate(reference, ids, 8, do_sample=True, generator=generator, eos_token_id=0)
        tokens = expected[0].tolist()
        assert completion.tokens == tokens[: len(completion.tokens)]
