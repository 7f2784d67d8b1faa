"""The scheduler: under concurrent requests every completion (greedy, and seeded sampled ones) is
exactly what generate() gives that request alone, for every method, the bundled model and a
HyenaDNA fixture; stop strings, cancellation, a full queue, errors; the plans schedule() makes,
update() stopping at a stop string, and the caller's request left as it was."""

from __future__ import annotations

import copy
import dataclasses
import random
import threading
import time
from pathlib import Path

import pytest
import torch

from futurefill import METHODS, Decoder, DecoderOutput, generate
from futurefill.pretrained.tokenizers import ByteTokenizer, DnaTokenizer, load_with_tokenizer
from futurefill.serving import QueueFull, Request, Sampling, Scheduler
from futurefill.serving.scheduler import Piece, Plan

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pretrained"


def wait_until(condition, bound: float = 120.0) -> None:
    """Until ``condition()`` holds; a test failure after ``bound`` seconds (generous: the
    machine may be loaded), never a hang."""
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"not within {bound} s"
        time.sleep(0.001)


@pytest.fixture(scope="module")
def bundled():
    model, tokenizer, _ = load_with_tokenizer()
    return model, tokenizer


def alone(model, request: Request) -> list[int]:
    """What generate() gives the request by itself."""
    sampling = request.sampling
    options = {}
    if sampling.temperature > 0:
        options = dict(
            do_sample=True,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            generator=torch.Generator().manual_seed(sampling.seed),
        )
    ids = torch.tensor([request.prompt_ids])
    allowed = request.allowed_token_ids
    return generate(model, ids, request.max_tokens, allowed_token_ids=allowed, **options)[
        0
    ].tolist()


def run_concurrently(scheduler: Scheduler, requests: list[Request], stagger: float = 0.0):
    results = [None] * len(requests)

    def go(i):
        (results[i],) = scheduler.complete(requests[i], timeout=120)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
        threading.Event().wait(stagger)
    for thread in threads:
        thread.join()
    return results


def mixed_requests(tokenizer, count: int, seed: int, max_prompt: int = 60, max_new: int = 40):
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        prompt = [
            rng.randrange(7, 12) if tokenizer.name == "dna" else rng.randrange(32, 127)
            for _ in range(rng.randint(1, max_prompt))
        ]
        sampling = Sampling() if i % 2 else Sampling(temperature=0.9, top_k=20, seed=i)
        requests.append(
            Request(
                prompt,
                rng.randint(1, max_new),
                sampling,
                allowed_token_ids=tokenizer.allowed_token_ids,
            )
        )
    return requests


@pytest.mark.parametrize("method", METHODS)
def test_every_request_gets_what_it_would_get_alone(bundled, method):
    model, tokenizer = bundled
    reference = copy.deepcopy(model)
    requests = mixed_requests(tokenizer, 10, seed=hash(method) % 1000)
    scheduler = Scheduler(model, tokenizer, slots=4, max_len=128, method=method).start()
    try:
        results = run_concurrently(scheduler, requests, stagger=0.002)
    finally:
        scheduler.stop()
    for request, result in zip(requests, results, strict=True):
        assert result.finish_reason == "length"
        assert result.tokens == alone(reference, request), request


def test_a_hyenadna_model_under_load_and_compiled(tmp_path):
    model, tokenizer, _ = load_with_tokenizer(str(FIXTURES / "hyenadna-hf"))
    assert isinstance(tokenizer, DnaTokenizer)
    reference = copy.deepcopy(model)
    requests = mixed_requests(tokenizer, 8, seed=3, max_prompt=20, max_new=20)
    scheduler = Scheduler(model, tokenizer, slots=3, max_len=40, compile=True).start()
    try:
        results = run_concurrently(scheduler, requests)
    finally:
        scheduler.stop()
    for request, result in zip(requests, results, strict=True):
        assert result.tokens == alone(reference, request)
        assert set(result.text) <= set("ACGTN")


def test_stop_strings_end_the_text_before_them(bundled):
    model, tokenizer = bundled
    prompt = tokenizer.encode("The with statement")
    scheduler = Scheduler(model, tokenizer, slots=2, max_len=128).start()
    try:
        (full,) = scheduler.complete(Request(prompt, 40))
        stop = full.text[10:13]
        (cut,) = scheduler.complete(Request(prompt, 40, stop=[stop, "never there"]))
    finally:
        scheduler.stop()
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]


def test_cancel_frees_the_slot_and_a_full_queue_refuses(bundled):
    model, tokenizer = bundled
    scheduler = Scheduler(model, tokenizer, slots=1, max_len=600, queue_size=1).start()
    events = []
    try:
        long = Request(
            tokenizer.encode("a"), 500, on_event=lambda e: events.append(e.finish_reason)
        )
        handle = scheduler.submit(long)
        waiting = Request(tokenizer.encode("b"), 3)
        wait_until(lambda: scheduler.running > 0)
        scheduler.submit(waiting)  # the queue's one place
        with pytest.raises(QueueFull, match="1 requests are waiting already"):
            scheduler.submit(Request(tokenizer.encode("c"), 3))
        scheduler.cancel(long)  # its slot goes to the waiting request, the queue empties
        wait_until(lambda: scheduler.queue_length == 0)
        (done,) = scheduler.complete(Request(tokenizer.encode("d"), 3), timeout=60)
        assert done.finish_reason == "length"
    finally:
        scheduler.stop()
    assert events[-1] == "cancelled" and len(handle.tokens) < 500


def test_requests_that_cannot_fit_are_refused_before_queueing(bundled):
    model, tokenizer = bundled
    scheduler = Scheduler(model, tokenizer, slots=1, max_len=32)
    with pytest.raises(ValueError, match="max_tokens: the prompt's 10 tokens"):
        scheduler.submit(Request([65] * 10, 30))
    with pytest.raises(ValueError, match=r"prompt: token ids must be in \[0, 256\)"):
        scheduler.submit(Request([300], 3))
    with pytest.raises(ValueError, match="prompt: at least one token"):
        scheduler.submit(Request([], 3))
    assert scheduler.queue_length == 0
    scheduler.stop()


def test_memory_per_slot_is_at_most_a_single_sessions_and_never_grows(bundled):
    model, tokenizer = bundled
    held = {}
    for slots in (3, 6):
        scheduler = Scheduler(model, tokenizer, slots=slots, max_len=64).start()
        try:
            scheduler.complete(Request(tokenizer.encode("x"), 2))
            held[slots] = scheduler.decoder.nbytes
            for prompt in ("def f(x):", "import os\n" * 3, "y"):
                scheduler.complete(Request(tokenizer.encode(prompt), 20))
            assert scheduler.decoder.nbytes == held[slots]  # no global clock: nothing grows
        finally:
            scheduler.stop()
    with Decoder(model, batch_size=1, max_len=64) as decoder:
        decoder.prefill(torch.tensor([tokenizer.encode("x")]))
        single = decoder.nbytes
    # One more row costs its own inputs, known outputs and tiles, at most what a decoder of one
    # row holds; the filter tables are shared by the rows: B rows hold the tables and B rows.
    per_row = (held[6] - held[3]) // 3
    assert 0 < per_row <= single and held[3] == single + 2 * per_row


def test_long_prompts_are_prefilled_in_chunks_while_the_others_step(bundled):
    model, tokenizer = bundled
    reference = copy.deepcopy(model)
    chunks = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.config = model, model.config

        def forward(self, ids):
            chunks.append(tuple(ids.shape))
            return self.model(ids)

    scheduler = Scheduler(
        Counting(), tokenizer, slots=2, max_len=400, prefill_chunk=64, prefix_cache_bytes=0
    ).start()
    try:
        short = Request(tokenizer.encode("x = 1"), 90)
        long = Request(list(b"The with statement is used " * 11), 5)  # 297 tokens
        results = run_concurrently(scheduler, [short, long], stagger=0.05)
        # 297 tokens, 64 an iteration, each piece packed with the short request's step
        pieces = [n - 1 for batch, n in chunks if batch == 1 and n > 1 and n != 5]
        assert pieces == [64, 64, 64, 64, 41]
        assert results[1].tokens == alone(reference, long)
        assert results[0].tokens == alone(reference, short)
        chunks.clear()  # alone, nobody waits: the whole prompt in one pass
        again = Request(list(b"The with statement is used " * 11), 5)
        assert scheduler.complete(again)[0].tokens == results[1].tokens
        assert [n for _, n in chunks] == [297, 1, 1, 1, 1]
    finally:
        scheduler.stop()


@pytest.mark.parametrize("hybrid", ["flash_stu", "striped_hyena"])
def test_a_hybrid_model_under_load(hybrid):
    """Attention's key/value cache at independent positions, beside the convolutions."""
    from futurefill import ConvLM, ConvLMConfig

    torch.manual_seed(9)
    config = ConvLMConfig.hybrid(
        hybrid,
        d_model=32,
        n_layers=4,
        max_len=128,
        attention_window=6 if hybrid == "flash_stu" else None,
    )
    model = ConvLM(config).eval()
    reference = copy.deepcopy(model)
    tokenizer = ByteTokenizer()
    requests = mixed_requests(tokenizer, 8, seed=5, max_prompt=30, max_new=25)
    scheduler = Scheduler(model, tokenizer, slots=3, max_len=64).start()
    try:
        results = run_concurrently(scheduler, requests, stagger=0.002)
    finally:
        scheduler.stop()
    for request, result in zip(requests, results, strict=True):
        assert result.tokens == alone(reference, request)


def test_schedule_plans_whole_prompts_alone_and_pieces_beside_steps(bundled):
    model, tokenizer = bundled
    scheduler = Scheduler(model, tokenizer, slots=2, max_len=64, prefill_chunk=8)
    try:
        first, second = list(range(65, 85)), list(range(70, 90))  # 20 tokens each
        handle = scheduler.submit(Request(first, 5))
        plan = scheduler.schedule()  # nothing running: the whole prompt, chunk or not
        assert plan == Plan(piece=Piece(0, tuple(first), starts=True, ends=True), admitted=(0,))
        scheduler.update(plan, scheduler.run(plan))
        (token,) = handle.tokens
        scheduler.submit(Request(second, 5))
        plan = scheduler.schedule()  # row 0 steps, beside the first piece of the new prompt
        piece = Piece(1, tuple(second[:8]), starts=True, ends=False)
        assert plan == Plan(rows=(0,), ids=(token,), piece=piece, admitted=(1,))
        scheduler.update(plan, scheduler.run(plan))
        plan = scheduler.schedule()
        assert plan.rows == (0,) and plan.ids == (handle.tokens[-1],)
        assert plan.piece == Piece(1, tuple(second[8:16]), starts=False, ends=False, offset=8)
    finally:
        scheduler.stop()


def test_update_ends_a_request_at_its_stop_string(bundled):
    model, tokenizer = bundled
    scheduler = Scheduler(model, tokenizer, slots=2, max_len=64)
    events = []
    try:
        handle = scheduler.submit(
            Request(
                [65], 10, stop=["cd"], on_event=lambda e: events.append((e.text, e.finish_reason))
            )
        )

        def chosen(token: int) -> DecoderOutput:  # the model's output, as if it chose token
            logits = torch.zeros(1, scheduler.vocab_size)
            logits[0, token] = 1.0
            return DecoderOutput(logits, torch.tensor([token]))

        plan = scheduler.schedule()
        scheduler.update(plan, (None, chosen(ord("x"))))  # the prompt's piece: a first token
        for letter in "cd":
            plan = scheduler.schedule()
            assert plan.rows == (0,) and plan.piece is None
            scheduler.update(plan, (chosen(ord(letter)), None))
        assert handle.tokens == [ord("x"), ord("c"), ord("d")]
        assert "".join(t for t, _ in events) == "x" and events[-1] == ("", "stop")
        assert scheduler.schedule() == Plan(released=(0,))  # its row freed
        assert scheduler.running == 0
    finally:
        scheduler.stop()


def test_the_callers_request_is_left_as_it_was(bundled):
    model, tokenizer = bundled
    texts = []
    request = Request(
        tokenizer.encode("def f(x):"),
        12,
        Sampling(temperature=0.8, seed=3),
        stop=["never there"],
        on_event=lambda event: texts.append(event.text),
    )
    before, callback = dataclasses.asdict(request), request.on_event
    scheduler = Scheduler(model, tokenizer, slots=2, max_len=64).start()
    try:
        (done,) = scheduler.complete(request)
    finally:
        scheduler.stop()
    assert done.finish_reason == "length" and "".join(texts) == done.text
    assert dataclasses.asdict(request) == before and request.on_event is callback


class Recording:
    """A decoder's calls, as run() makes them."""

    device = torch.device("cpu")

    def __init__(self, packs: bool):
        self.packs, self.calls = packs, []

    def start(self, row, ids, all_positions=False):
        self.calls.append(("start", row, ids.tolist()))
        return "piece"

    def extend(self, row, ids, all_positions=False):
        self.calls.append(("extend", row, ids.tolist()))
        return "piece"

    def step(self, ids, rows):
        self.calls.append(("step", ids.tolist(), list(rows)))
        return "steps"

    def step_and_extend(self, ids, rows, row, piece, all_positions=False):
        self.calls.append(("step_and_extend", ids.tolist(), list(rows), row, piece.tolist()))
        return "steps", "piece"


@pytest.mark.parametrize("packs", [True, False])
def test_run_packs_only_where_the_decoder_packs(bundled, packs):
    model, tokenizer = bundled
    scheduler = Scheduler(model, tokenizer, slots=3, max_len=64)
    decoder, scheduler.decoder = scheduler.decoder, Recording(packs)
    try:
        both = Plan(rows=(0, 2), ids=(5, 6), piece=Piece(1, (7, 8), starts=True, ends=False))
        assert scheduler.run(both) == ("steps", "piece")
        piece_only = Plan(piece=Piece(1, (9,), starts=False, ends=True))
        assert scheduler.run(piece_only) == (None, "piece")
        assert scheduler.run(Plan(rows=(1,), ids=(4,))) == ("steps", None)
        first = [("step_and_extend", [5, 6], [0, 2], 1, [7, 8])]
        if not packs:  # explicitly two calls: the piece, then the steps
            first = [("start", 1, [7, 8]), ("step", [5, 6], [0, 2])]
        rest = [("extend", 1, [9]), ("step", [4], [1])]
        assert scheduler.decoder.calls == [*first, *rest]
    finally:
        decoder.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_raising_callback_stops_the_engine_and_every_request_still_ends(bundled):
    model, tokenizer = bundled
    scheduler = Scheduler(model, tokenizer, slots=1, max_len=64)
    ends = []

    def broken(event):
        raise RuntimeError("the caller's bug")

    try:
        scheduler.submit(Request(tokenizer.encode("def"), 5, on_event=broken))
        scheduler.submit(
            Request([66], 5, on_event=lambda e: e.finish_reason and ends.append(e.finish_reason))
        )
        scheduler.start()
        deadline = time.monotonic() + 60
        while not ends and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ends == ["cancelled"] and isinstance(scheduler.error, RuntimeError)
        with pytest.raises(QueueFull, match="shutting down"):
            scheduler.submit(Request([67], 2))  # refused, not left waiting forever
    finally:
        scheduler.stop()
