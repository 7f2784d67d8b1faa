"""CausalAttention: decoding through its key/value cache equals the parallel forward (float64,
1e-9) for every method of the model's convolutions, windows below, at and above the prompt, GQA
and MHA, ALiBi, softcap, rotary, 1-token prompts and rows started with prompts of different
lengths, rows at their own positions (started, chunked prompts, packed chunks, released),
compiled steps; the forward against a plain reference; rotary's convention; the positions each
token is given."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from torch import nn

from futurefill import Decoder, generate
from futurefill import nn as ffnn
from futurefill.testing import assert_decoding_matches_forward
from reference import rel_err

VOCAB, WIDTH = 32, 16


class HybridLM(nn.Module):
    """A long convolution block, then an attention block (rotary on q and k), then a head."""

    def __init__(self, heads=4, kv_heads=2, window=None, alibi=False, softcap=None, max_len=64):
        super().__init__()
        self.heads, self.kv_heads, dim = heads, kv_heads, WIDTH // heads
        self.embed, self.head = nn.Embedding(VOCAB, WIDTH), nn.Linear(WIDTH, VOCAB)
        self.conv = ffnn.LongConv(WIDTH, max_len, skip=True)
        self.q = nn.Linear(WIDTH, heads * dim)
        self.kv = nn.Linear(WIDTH, 2 * kv_heads * dim)
        slopes = torch.tensor([2.0 ** (-(i + 1)) for i in range(heads)]) if alibi else None
        self.attn = ffnn.CausalAttention(window=window, alibi=slopes, softcap=softcap)
        self.out = nn.Linear(heads * dim, WIDTH)

    def forward(self, ids):
        x = self.embed(ids)
        x = x + torch.tanh(self.conv(x))
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, self.heads, -1)
        k, v = self.kv(x).view(batch, length, 2 * self.kv_heads, -1).chunk(2, dim=2)
        positions = ffnn.positions(self, x)
        q, k = ffnn.rotary(q, positions), ffnn.rotary(k, positions)
        x = x + self.out(self.attn(q, k, v).reshape(batch, length, -1))
        return self.head(x)


def model_for(seed=0, **options) -> HybridLM:
    torch.manual_seed(seed)
    return HybridLM(**options).double().eval()


CONFIGS = [
    {},  # MHA-shaped GQA, full attention, the forward by SDPA
    {"heads": 4, "kv_heads": 4, "alibi": True},
    {"heads": 4, "kv_heads": 1, "window": 3, "softcap": 2.0},
    {"window": 10, "alibi": True},  # the window equal to the prompt below
    {"window": 50, "softcap": 5.0},  # longer than everything
]


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default"
)
def test_decoding_matches_the_forward_for_every_method(config):
    model = model_for(**config)
    ids = torch.randint(0, VOCAB, (3, 21), generator=torch.Generator().manual_seed(1))
    assert_decoding_matches_forward(model, ids, prompt_lens=(0, 1, 10, 20))


def test_forward_against_a_plain_reference():
    """The masked formulation (window, ALiBi, softcap, GQA) with loops in float64."""
    torch.manual_seed(2)
    attn = ffnn.CausalAttention(window=2, alibi=torch.tensor([0.5, 0.25]), softcap=3.0).double()
    q = torch.randn(1, 6, 2, 4, dtype=torch.float64)
    k, v = (torch.randn(1, 6, 1, 4, dtype=torch.float64) for _ in range(2))
    out = attn(q, k, v)
    for i in range(6):
        for h in range(2):
            scores = []
            for j in range(max(0, i - 2), i + 1):
                s = float(q[0, i, h] @ k[0, j, 0]) / 2.0
                s = 3.0 * math.tanh(s / 3.0) - [0.5, 0.25][h] * (i - j)
                scores.append(s)
            weights = torch.softmax(torch.tensor(scores, dtype=torch.float64), 0)
            expected = sum(
                w * v[0, j, 0] for w, j in zip(weights, range(max(0, i - 2), i + 1), strict=True)
            )
            assert rel_err(out[0, i, h], expected) < 1e-12


def test_rotary_turns_channel_pairs_by_the_position():
    x = torch.randn(1, 3, 1, 4, dtype=torch.float64)
    turned = ffnn.rotary(x, torch.tensor([[0, 1, 5]]), base=100.0)
    assert torch.equal(turned[:, 0], x[:, 0])
    for t, p in enumerate((0, 1, 5)):
        for c in range(2):
            angle = p * 100.0 ** (-2 * c / 4)
            a, b = x[0, t, 0, c], x[0, t, 0, c + 2]
            assert float(turned[0, t, 0, c]) == pytest.approx(
                float(a * math.cos(angle) - b * math.sin(angle))
            )
            assert float(turned[0, t, 0, c + 2]) == pytest.approx(
                float(b * math.cos(angle) + a * math.sin(angle))
            )


@pytest.mark.parametrize("window", [None, 4])
def test_rows_started_with_prompts_of_different_lengths_each_get_what_they_would_alone(window):
    """Prompts of 9, 4 and 1 tokens: each row's logits, at its prompt's end and at every step
    after, are its own sequence's forward, as if it were decoded alone."""
    model = model_for(window=window, alibi=True)
    reference = copy.deepcopy(model)
    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(3))
    lengths = [9, 4, 1]
    sequences = [ids[row, :length].tolist() for row, length in enumerate(lengths)]
    with Decoder(model, batch_size=3, max_len=20) as decoder:
        out = decoder.prefill(ids, prompt_lengths=lengths)
        assert decoder.positions.tolist() == lengths
        for _ in range(6):
            for row, sequence in enumerate(sequences):
                expected = reference(torch.tensor([sequence]))[0, -1]
                assert rel_err(out.logits[row], expected) < 1e-10, (row, len(sequence))
                sequence.append(int(out.greedy[row]))
            out = decoder.step(torch.tensor([sequence[-1] for sequence in sequences]))
        assert decoder.positions.tolist() == [length + 6 for length in lengths]


@pytest.mark.parametrize("compile", [False, True])
def test_rows_at_their_own_positions(compile):
    """Rows start (prompts of 1 to 8 tokens, whole or in pieces: chunked prefill, the first or a
    later piece packed beside other rows' steps where the decoder packs), step (any subset), are
    released and restart, at random: every logit is the forward of its own row's sequence."""
    model = model_for(window=5, alibi=True, softcap=4.0)
    reference = copy.deepcopy(model)
    rng = random.Random(4)
    sequences: dict[int, list[int]] = {}  # row -> its tokens fed, then the next one to feed
    pending: dict[int, list[list[int]]] = {}  # row -> its prompt's pieces not fed yet

    def check(out, i: int, row: int) -> None:
        expected = reference(torch.tensor([sequences[row]]))[0, -1]
        assert rel_err(out.logits[i], expected) < 1e-9, row

    def stepped(out, rows: list[int]) -> None:
        for i, row in enumerate(rows):
            check(out, i, row)
            sequences[row].append(int(out.greedy[i]))

    def fed_piece(out, row: int, piece: list[int]) -> None:
        sequences[row] += piece
        check(out, 0, row)
        if not pending[row]:  # the whole prompt is in: the row generates
            del pending[row]
            sequences[row].append(int(out.greedy[0]))

    with Decoder(model, batch_size=3, max_len=30, compile=compile) as dec:
        assert dec.packs is not compile
        kinds = set()
        for _ in range(60):
            free = [r for r in range(3) if r not in sequences]
            live = [r for r, s in sequences.items() if r not in pending and len(s) <= 30]
            pack = dec.packs and live and rng.random() < 0.5
            steps = rng.sample(live, rng.randint(1, len(live))) if pack else []  # any order
            ids = torch.tensor([sequences[r][-1] for r in steps], dtype=torch.long)
            if free and (rng.random() < 0.3 or not sequences):
                row = rng.choice(free)
                prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 8))]
                cuts = sorted(rng.sample(range(1, len(prompt)), min(len(prompt) - 1, 2)))
                pieces = [
                    prompt[a:b] for a, b in zip([0, *cuts], [*cuts, len(prompt)], strict=True)
                ]
                pending[row], sequences[row] = pieces[1:], []
                piece = pieces[0]
                if steps:
                    out, last = dec.step_and_extend(ids, steps, row, torch.tensor(piece))
                    stepped(out, steps)
                    kinds.add("packed start")
                else:
                    last = dec.start(row, torch.tensor(piece))
                    kinds.add("start")
                fed_piece(last, row, piece)
            elif pending and rng.random() < 0.5:
                row = rng.choice(sorted(pending))
                piece = pending[row].pop(0)
                if steps:
                    out, last = dec.step_and_extend(ids, steps, row, torch.tensor(piece))
                    stepped(out, steps)
                    kinds.add("packed extend")
                else:
                    last = dec.extend(row, torch.tensor(piece))
                    kinds.add("extend")
                fed_piece(last, row, piece)
            elif sequences and rng.random() < 0.15:
                row = rng.choice(sorted(sequences))
                dec.release(row)
                del sequences[row]
                pending.pop(row, None)
                kinds.add("release")
            elif live:
                rows = steps or rng.sample(live, rng.randint(1, len(live)))
                out = dec.step(torch.tensor([sequences[r][-1] for r in rows]), rows)
                stepped(out, rows)
                kinds.add("step")
            fed = [
                len(sequences[r]) - (r not in pending) if r in sequences else 0 for r in range(3)
            ]
            assert dec.positions.tolist() == fed
        everything = {"start", "extend", "release", "step"}
        assert kinds >= (
            everything | {"packed start", "packed extend"} if dec.packs else everything
        )


def test_every_row_in_any_order():
    """A call of every row in another order than the session's: each row continues from its own
    position (rows at different positions: 1 and 2)."""
    torch.manual_seed(0)
    attn = ffnn.CausalAttention().double()
    q, k, v = (torch.randn(2, 4, 1, 4, dtype=torch.float64) for _ in range(3))
    expected = attn(q, k, v)
    with torch.no_grad(), ffnn.decoding(attn, batch_size=2, max_len=4) as session:
        session.feed(q[:1, :1], k[:1, :1], v[:1, :1], rows=[0])
        session.feed(q[1:, :2], k[1:, :2], v[1:, :2], rows=[1])
        rows, at = [1, 0], [2, 1]
        y = session.feed(q[rows, at, None], k[rows, at, None], v[rows, at, None], rows=rows)
        assert session.positions.tolist() == [2, 3]
    assert rel_err(y[:, 0], expected[rows, at]) < 1e-12


def test_positions_are_each_tokens_own():
    """positions(module, x): arange outside a session; in one, each token's position in its own
    row: rows fed alone or together at different positions, a packed chunk, a reset row."""

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = ffnn.ShortConv(2)
            self.seen: list[list[list[int]]] = []

        def forward(self, x):
            self.seen.append(ffnn.positions(self.conv, x).tolist())
            return self.conv(x)

    probe = Probe()
    x = torch.zeros(2, 3, 2)
    probe(x)
    with torch.no_grad(), ffnn.decoding(probe, batch_size=2, max_len=10) as session:
        session.feed(x[:1], rows=[1])
        session.feed(x[:, :2])
        session.feed_packed(torch.zeros(1, 3, 2), rows=[0], piece_row=1)
        session.reset_rows([1])
        session.feed(x[:, :1], rows=[1, 0])
    assert probe.seen == [
        [[0, 1, 2], [0, 1, 2]],
        [[0, 1, 2]],
        [[0, 1], [3, 4]],
        [[2, 5, 6]],
        [[0], [3]],
    ]


def test_compiled_generation_gives_eager_tokens_and_the_cache_is_the_window():
    model = model_for(window=6)
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(5))
    eager = generate(model, ids, 40)
    assert torch.equal(generate(model, ids, 40, compile=True), eager)
    with Decoder(model, batch_size=2, max_len=60) as decoder:
        decoder.prefill(ids)
        state = decoder.session.states["attn"]
        assert state.keys.shape[2] == 7  # window + 1 slots, whatever max_len


def test_bad_shapes_are_refused():
    attn = ffnn.CausalAttention()
    with pytest.raises(ValueError, match="kv_heads dividing heads"):
        attn(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4))
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        ffnn.CausalAttention(window=0)


def test_the_forward_in_query_blocks_equals_one_block(monkeypatch):
    from futurefill.nn import attention

    attn = ffnn.CausalAttention(window=5, alibi=torch.tensor([0.3, 0.1]), softcap=2.0).double()
    q = torch.randn(2, 23, 2, 4, dtype=torch.float64)
    k, v = (torch.randn(2, 23, 1, 4, dtype=torch.float64) for _ in range(2))
    whole = attn(q, k, v)
    monkeypatch.setattr(attention, "QUERY_BLOCK", 4)
    assert rel_err(attn(q, k, v), whole) < 1e-12
    full = ffnn.CausalAttention(softcap=2.0).double()
    expected = full(q, k, v)
    monkeypatch.setattr(attention, "QUERY_BLOCK", 3)
    assert rel_err(full(q, k, v), expected) < 1e-12


@pytest.mark.parametrize("window", [None, 4])
def test_prompts_longer_than_a_query_block_decode_exactly(window, monkeypatch):
    from futurefill.nn import attention

    monkeypatch.setattr(attention, "QUERY_BLOCK", 3)
    model = model_for(window=window, alibi=True)
    ids = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(8))
    assert_decoding_matches_forward(model, ids, prompt_lens=(0, 10, 16))


@pytest.mark.parametrize("window", [None, 4])
def test_a_small_memory_budget_gives_smaller_blocks_and_the_same_outputs(window, monkeypatch):
    """The block of queries shrinks with the keys it sees (memory bounded whatever the prompt):
    down to one query a block, the outputs are the same; chunks see the filled slots only."""
    from futurefill.nn import attention

    model = model_for(window=window, alibi=True)
    ids = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(9))
    seen = []
    masked = attention.CausalAttention.masked_attention

    def spy(self, q, keys, *args):
        seen.append((q.shape[1], keys.shape[2]))
        return masked(self, q, keys, *args)

    monkeypatch.setattr(attention, "BLOCK_BYTES", 1)
    monkeypatch.setattr(attention.CausalAttention, "masked_attention", spy)
    assert_decoding_matches_forward(model, ids, prompt_lens=(7, 12))
    assert seen and max(block for block, _ in seen) == 1
    with Decoder(model, batch_size=1, max_len=64) as decoder:
        decoder.prefill(ids[:1, :5])
        seen.clear()
        decoder.extend(0, ids[0, 5:9])
    if window is None:  # 5 filled slots of 64, and the chunk's own keys
        assert max(keys for _, keys in seen) == 5 + 4
