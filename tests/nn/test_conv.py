"""futurefill.nn.LongConv and FilterBankConv: forward against numpy, and decoding in a session
(every method, prompts of 0, 1 and many positions, chunks of 1, 5 and the whole remainder,
the feedback loop, rows at their own positions: started, stepped, fed chunks and packed chunks,
reset, side by side) against the same float64 references."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from futurefill import METHODS, decoding
from futurefill.nn import FilterBankConv, LongConv
from reference import decaying_filter, decode_chunks, reference_conv, reference_feedback, rel_err

C, MAX_LEN = 3, 40
OPTIONS = {
    "naive": [{}],
    "epoched": [{"epoch_len": 1}, {"epoch_len": 4}, {}],
    "continuous": [{"tile_len": 1}, {"tile_len": 4}, {}],
    "deamortized": [{"tile_len": 1}, {"tile_len": 4}, {}],
}
CASES = [(method, opts) for method in METHODS for opts in OPTIONS[method]]
# (prompt length, chunk length): stepping from the start, 1-token and longer prompts, chunks of
# 5 after nothing, the whole remainder after a prompt.
SCHEDULES = [(0, 1), (1, 1), (9, 1), (0, 5), (4, 100), (23, 1)]


class CountingFilter:
    """An implicit filter ``length -> (channels, length)`` that counts its calls."""

    def __init__(self, channels: int, dtype=torch.float64):
        self.h = decaying_filter(channels, MAX_LEN, dtype, seed=5)
        self.calls = 0

    def __call__(self, length: int) -> torch.Tensor:
        self.calls += 1
        return self.h[:, :length]


def explicit(dtype=torch.float64, skip=False) -> LongConv:
    torch.manual_seed(0)
    conv = LongConv(C, MAX_LEN, skip=skip).to(dtype)
    if skip:
        with torch.no_grad():
            conv.skip.uniform_(-1, 1)
    return conv


def reference_longconv(conv: LongConv, u: torch.Tensor) -> np.ndarray:
    """numpy.convolve per channel (+ skip), time-major (B, T, C)."""
    h = conv.filter_taps(MAX_LEN).detach().double().numpy()
    y = reference_conv(u.double().numpy().transpose(0, 2, 1), h).transpose(0, 2, 1)
    if conv.skip is not None:
        y = y + conv.skip.detach().double().numpy() * u.double().numpy()
    return y


def reference_bank(bank: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(B, T, C) with bank (F, T') -> (B, T, C, F)."""
    out = [reference_conv(u.transpose(0, 2, 1), np.tile(f, (u.shape[2], 1))) for f in bank]
    return np.stack(out, axis=-1).transpose(0, 2, 1, 3)


def random_u(batch: int, length: int, channels: int = C, seed: int = 1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, channels, generator=gen, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("skip", [False, True])
def test_forward_matches_numpy(skip):
    conv = explicit(skip=skip)
    u = random_u(2, 23)
    assert rel_err(conv(u).detach(), reference_longconv(conv, u)) < 1e-12


@pytest.mark.parametrize(("method", "opts"), CASES)
@pytest.mark.parametrize(("prompt_len", "chunk"), SCHEDULES)
def test_explicit_decoding_matches_numpy(method, opts, prompt_len, chunk, device):
    conv = explicit(skip=True)
    u = random_u(3, 23)
    expected = reference_longconv(conv, u)
    y, _ = decode_chunks(conv.to(device), u.to(device), prompt_len, method, chunk=chunk, **opts)
    assert rel_err(y, expected) < 1e-10


@pytest.mark.parametrize(("method", "opts"), CASES)
@pytest.mark.parametrize(("prompt_len", "chunk"), SCHEDULES)
def test_implicit_decoding_matches_numpy(method, opts, prompt_len, chunk):
    filt = CountingFilter(C)
    conv = LongConv(C, MAX_LEN, filter=filt)
    u = random_u(2, 23, seed=2)
    y, _ = decode_chunks(conv, u, prompt_len, method, max_len=30, chunk=chunk, **opts)
    assert rel_err(y, reference_longconv(conv, u)) < 1e-10
    # the reference's call above; in the session once at max_len and once at the first chunk's
    # (shorter) length, to check that the taps are a prefix
    assert filt.calls == 3


@pytest.mark.parametrize(("method", "opts"), CASES)
@pytest.mark.parametrize(("prompt_len", "chunk"), SCHEDULES)
def test_filter_bank_decoding_matches_numpy(method, opts, prompt_len, chunk):
    bank = decaying_filter(4, MAX_LEN, seed=3)
    conv = FilterBankConv(C, MAX_LEN, 4, filter=lambda length: bank[:, :length])
    u = random_u(2, 23, seed=4)
    expected = reference_bank(bank.numpy(), u.numpy())
    assert rel_err(conv(u), expected) < 1e-12
    y, _ = decode_chunks(conv, u, prompt_len, method, chunk=chunk, **opts)
    assert y.shape == (2, 23, C, 4)
    assert rel_err(y, expected) < 1e-10


@pytest.mark.parametrize("method", METHODS)
def test_float32_decoding(method, device):
    conv = explicit(torch.float32, skip=True)
    u = random_u(2, 37, dtype=torch.float32)
    expected = reference_longconv(conv, u)
    conv, u = conv.to(device), u.to(device)
    for prompt_len in (0, 1, 20):
        y, _ = decode_chunks(conv, u, prompt_len, method)
        assert y.dtype == torch.float32
        assert rel_err(y, expected) < 1e-4


@settings(max_examples=30)
@given(
    method=st.sampled_from(METHODS),
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    length=st.integers(1, MAX_LEN),
    prompt_frac=st.floats(0, 1),
    chunk=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_decoding_matches_numpy_random(method, batch, channels, length, prompt_frac, chunk, seed):
    torch.manual_seed(seed)
    conv = LongConv(channels, MAX_LEN, skip=True).double()
    u = random_u(batch, length, channels, seed)
    y, _ = decode_chunks(conv, u, round(prompt_frac * length), method, chunk=chunk)
    assert rel_err(y, reference_longconv(conv, u)) < 1e-10


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("prompt_len", [0, 1, 13])
def test_feedback_loop(method, prompt_len):
    """u[t+1] = tanh(y[t]): every input depends on the output before it."""
    length = 31
    conv = explicit()
    h = conv.weight.detach().numpy()
    u0 = random_u(2, 1, seed=7)[:, 0]
    prompt = random_u(2, prompt_len, seed=8) if prompt_len else None
    _, outputs = reference_feedback(
        u0.numpy(), h, length, None if prompt is None else prompt.numpy().transpose(0, 2, 1)
    )
    with torch.no_grad(), decoding(conv, batch_size=2, max_len=length, method=method) as session:
        ys = [session.feed(prompt)] if prompt_len else []
        u_t = u0[:, None] if not prompt_len else torch.tanh(ys[0][:, -1:])
        for _ in range(prompt_len, length):
            y_t = session.feed(u_t)
            ys.append(y_t)
            u_t = torch.tanh(y_t)
    assert rel_err(torch.cat(ys, dim=1), outputs.transpose(0, 2, 1)) < 1e-10


def rows_at_their_own_positions(session, expected, channels: int, seed: int, events: int = 60):
    """Drive the rows of ``session`` (over one convolution) at random: rows start (a prompt of 1
    to 9 positions alone, or as the piece of a packed chunk beside steps of other rows), step
    (any subset, in any order), take chunks of 2 to 5 positions (rows at different positions in
    one call), are released, restart. Whenever a sequence ends (release, restart, the end), its
    outputs are checked against ``expected(inputs)`` (``(1, T, channels)`` -> ``(1, T, ...)``),
    and the session's positions against the positions fed."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    batch, max_len = session.batch_size, session.max_len
    inputs: dict[int, torch.Tensor] = {}  # live row -> its sequence's inputs (max_len, channels)
    outputs: dict[int, list[torch.Tensor]] = {}  # live row -> its outputs so far, (n, ...) each
    checked = []

    def fed(row: int) -> int:
        return sum(len(y) for y in outputs[row])

    def check(row: int) -> None:
        n = fed(row)
        y = torch.cat(outputs[row])[None]
        assert rel_err(y, expected(inputs[row][None, :n])) < 1e-10, (seed, row, n)
        checked.append(n)

    def begin(row: int) -> None:
        if row in inputs:
            check(row)
        inputs[row] = torch.randn(max_len, channels, generator=gen, dtype=torch.float64)
        outputs[row] = []

    def next_inputs(rows: list[int], n: int) -> torch.Tensor:
        return torch.stack([inputs[r][fed(r) : fed(r) + n] for r in rows])  # (R, n, channels)

    for _ in range(events):
        live = [r for r in inputs if fed(r) < max_len]
        kind = rng.choice(["start", "step", "step", "chunk", "packed", "release"])
        if kind == "start" or not live:
            row = rng.randrange(batch)
            if row in inputs:
                session.reset_rows([row])
            begin(row)
            y = session.feed(next_inputs([row], rng.randint(1, 9)), rows=[row])
            outputs[row].append(y[0])
        elif kind == "step":
            rows = rng.sample(live, rng.randint(1, len(live)))
            y = session.feed(next_inputs(rows, 1), rows=rows)
            for i, row in enumerate(rows):
                outputs[row].append(y[i])
        elif kind == "chunk":
            n = rng.randint(2, 5)
            rows = [r for r in live if fed(r) + n <= max_len]
            if not rows:
                continue
            rows = rng.sample(rows, rng.randint(1, len(rows)))
            y = session.feed(next_inputs(rows, n), rows=rows)
            for i, row in enumerate(rows):
                outputs[row].append(y[i])
        elif kind == "packed":
            stepping = rng.sample(live, rng.randint(1, len(live)))
            others = [r for r in range(batch) if r not in stepping]
            if not others:
                stepping = stepping[:-1]
                others = [r for r in range(batch) if r not in stepping]
            if not stepping:
                continue
            row = rng.choice(others)
            if row not in inputs or fed(row) == max_len:  # a new sequence starts in the piece
                if row in inputs:
                    session.reset_rows([row])
                begin(row)
            n = rng.randint(1, min(6, max_len - fed(row)))
            steps = next_inputs(stepping, 1)[:, 0]  # (R, channels)
            packed = torch.cat([steps, next_inputs([row], n)[0]])[None]
            y = session.feed_packed(packed, rows=stepping, piece_row=row)
            assert y.shape[:2] == (1, len(stepping) + n)
            for i, r in enumerate(stepping):
                outputs[r].append(y[0, i : i + 1])
            outputs[row].append(y[0, len(stepping) :])
        else:
            row = rng.choice(sorted(inputs))
            check(row)
            session.reset_rows([row])
            del inputs[row], outputs[row]
        expected_positions = [fed(r) if r in inputs else 0 for r in range(batch)]
        assert session.positions.tolist() == expected_positions
    for row in sorted(inputs):
        check(row)
    return checked


@pytest.mark.parametrize(("method", "opts"), CASES)
@pytest.mark.parametrize("kind", ["long", "bank"])
def test_rows_at_their_own_positions_match_numpy(kind, method, opts):
    """Every row gets the reference of its own inputs since its start, whatever the others do."""
    bank = decaying_filter(4, MAX_LEN, seed=3)
    if kind == "long":
        conv = explicit(skip=True)
    else:
        conv = FilterBankConv(C, MAX_LEN, 4, filter=lambda length: bank[:, :length])

    def expected(x: torch.Tensor) -> np.ndarray:
        if kind == "long":
            return reference_longconv(conv, x)
        return reference_bank(bank.numpy(), x.numpy())

    with (
        torch.no_grad(),
        decoding(conv, batch_size=3, max_len=23, method=method, **opts) as session,
    ):
        checked = rows_at_their_own_positions(
            session, expected, C, seed=CASES.index((method, opts))
        )
    assert len(checked) >= 3 and max(checked) >= 10  # sequences of several lengths were checked


def test_a_rejected_call_changes_nothing():
    """One clear error before anything moves: the rows then continue as if it never happened."""
    conv = explicit(skip=True)
    u = random_u(2, 12)
    with torch.no_grad(), decoding(conv, batch_size=2, max_len=12) as session:
        ys = [session.feed(u[:, :5])]
        step = u[:, 5:6]
        rejected = [
            (lambda: conv(step), RuntimeError, r"call the model through it \(session\.feed\)"),
            (lambda: session.feed(step[..., :2]), ValueError, r"\(batch, length, channels=3\)"),
            (lambda: session.feed(step.float()), RuntimeError, "dtype or device changed"),
            (
                lambda: session.feed(step[:1]),
                ValueError,
                "the chunk has a batch of 1; batch_size=2",
            ),
            (lambda: session.feed(step, rows=[0, 2]), ValueError, r"rows must be ints in \[0, 2\)"),
            (lambda: session.feed(step, rows=[1, 1]), ValueError, "rows must be distinct"),
            (lambda: session.feed(random_u(2, 8)), ValueError, "no room for 8 more"),
            (
                lambda: session.feed_packed(step[:1], rows=[0], piece_row=1),
                ValueError,
                r"a packed chunk is \(1, 1 \+ n\) with n >= 1",
            ),
        ]
        for call, error, match in rejected:
            with pytest.raises(error, match=match):
                call()
            assert session.positions.tolist() == [5, 5]
        ys.append(session.feed(step))
        ys.append(session.feed(u[:, 6:]))
    assert rel_err(torch.cat(ys, dim=1), reference_longconv(conv, u)) < 1e-10


def test_implicit_filter_is_materialised_once_per_session():
    filt = CountingFilter(C)
    conv = LongConv(C, MAX_LEN, filter=filt)
    u = random_u(1, 20)
    with torch.no_grad(), decoding(conv, batch_size=1, max_len=20) as session:
        assert filt.calls == 0  # nothing before the first chunk
        session.feed(u[:, :5])
        for t in range(5, 20):
            session.feed(u[:, t : t + 1])
        assert filt.calls == 2  # at max_len, and at 5 to check the taps are its prefix
        session.reset()
        session.feed(u[:, :1])
        assert filt.calls == 2  # a reset keeps the session's filter
    with torch.no_grad(), decoding(conv, batch_size=1, max_len=20) as session:
        session.feed(u[:, :20])
    assert filt.calls == 3  # a new session materialises it again (no check at max_len)


def test_the_session_filter_has_the_session_length():
    lengths = []
    conv = LongConv(C, MAX_LEN, filter=lambda n: lengths.append(n) or torch.ones(C, n))
    with torch.no_grad(), decoding(conv, batch_size=1, max_len=17) as session:
        session.feed(torch.ones(1, 3, C))
    assert lengths == [17, 3]  # the session's taps, then the first chunk's to check the prefix


def test_a_second_session_on_the_same_module_starts_fresh():
    conv = explicit()
    u1, u2 = random_u(2, 15, seed=1), random_u(2, 15, seed=2)
    decode_chunks(conv, u1, 6)
    y, _ = decode_chunks(conv, u2, 0, "naive")
    assert rel_err(y, reference_longconv(conv, u2)) < 1e-10


def test_autograd_outside_a_session():
    torch.manual_seed(0)
    conv = LongConv(2, 8, skip=True).double()
    u = random_u(1, 6, 2).requires_grad_()
    assert torch.autograd.gradcheck(lambda u: torch.nn.functional.gelu(conv(u)), (u,))
    conv(u).square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad[:, :6].abs().sum() > 0
    assert conv.weight.grad[:, 6:].abs().sum() == 0  # taps beyond the sequence are unused
    assert conv.skip.grad is not None and u.grad is not None

    scale = torch.ones(2, 1, dtype=torch.float64, requires_grad=True)
    implicit = LongConv(2, 8, filter=lambda n: scale * torch.ones(2, n, dtype=torch.float64))
    implicit(random_u(1, 6, 2)).sum().backward()
    assert scale.grad is not None and scale.grad.abs().sum() > 0


def test_module_errors():
    with pytest.raises(TypeError, match="filter must be a callable"):
        LongConv(C, 10, filter=torch.ones(C, 10))
    with pytest.raises(ValueError, match="channels must be >= 1"):
        LongConv(0, 10)
    with pytest.raises(TypeError, match="max_len must be an int"):
        LongConv(C, 10.5)
    conv = explicit()
    with pytest.raises(ValueError, match=r"\(batch, length, channels=3\)"):
        conv(torch.zeros(1, 5, C + 1, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"u must be a torch\.Tensor"):
        conv([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="exceeds the filter length 40"):
        conv(torch.zeros(1, MAX_LEN + 1, C, dtype=torch.float64))
    wrong = LongConv(C, 10, filter=lambda n: torch.ones(C + 1, n))
    with pytest.raises(ValueError, match=r"filter\(4\) must return a tensor \(3, >= 4\)"):
        wrong(torch.ones(1, 4, C))
    short = LongConv(C, 10, filter=lambda n: torch.ones(C, 3))
    with pytest.raises(ValueError, match="returned 3 taps, fewer than the 10 asked for"):
        with decoding(short, batch_size=1) as session:
            session.feed(torch.ones(1, 4, C))


class LengthNormalizedLM(torch.nn.Module):
    """A Hyena-style implicit filter written the common wrong way: positions normalised by the
    length asked for (t / length), so filter(n) != filter(N)[:, :n]."""

    def __init__(self, vocab=16, width=4, max_len=64):
        super().__init__()
        self.embed, self.head = torch.nn.Embedding(vocab, width), torch.nn.Linear(width, vocab)
        self.rates = torch.nn.Parameter(torch.linspace(1.0, 4.0, width))
        self.long = LongConv(width, max_len, filter=self.taps)

    def taps(self, length):
        t = torch.arange(length, dtype=self.rates.dtype) / length
        return torch.exp(-self.rates[:, None] * t)

    def forward(self, ids):
        return self.head(self.long(self.embed(ids)))


def test_a_filter_that_depends_on_the_length_is_refused_at_the_first_chunk():
    from futurefill.nn import FilterLengthError

    model = LengthNormalizedLM().double()
    ids = torch.randint(0, 16, (2, 10), generator=torch.Generator().manual_seed(0))
    with decoding(model, batch_size=2, max_len=40) as session:
        with pytest.raises(FilterLengthError, match=r"'long': its filter's taps depend on the"):
            session.feed(ids)
        assert session.positions.tolist() == [0, 0] and session.nbytes == 0  # nothing built
    with decoding(model, batch_size=2, max_len=10) as session:  # the forward's own length:
        session.feed(ids)  # nothing to see


def test_the_checker_decodes_longer_than_its_input_and_catches_it():
    from futurefill.testing import assert_decoding_matches_forward

    model = LengthNormalizedLM().double()
    ids = torch.randint(0, 16, (2, 12), generator=torch.Generator().manual_seed(1))
    with pytest.raises(AssertionError, match="filter's taps depend on the length"):
        assert_decoding_matches_forward(model, ids)
