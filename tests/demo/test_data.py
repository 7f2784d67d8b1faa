"""The demo corpus: deterministic loading, byte tokenisation, split, batches, baselines."""

from __future__ import annotations

import math

import pytest
import torch

from futurefill.demo import data


def test_corpus_is_deterministic_sorted_topics():
    from pydoc_data.topics import topics

    raw = data.load_corpus()
    assert raw == data.load_corpus()
    first = sorted(topics)[0]
    assert raw.startswith(topics[first].encode("utf-8"))
    assert len(raw) > 100_000
    assert data.corpus_sha256(raw) == data.corpus_sha256()


def test_encode_decode_round_trip():
    text = "def f(x):\n    return 'héllo €'"
    ids = data.encode(text)
    assert ids.dtype == torch.int64 and ids.dim() == 1
    assert int(ids.max()) < data.VOCAB_SIZE
    assert len(ids) == len(text.encode("utf-8"))
    assert data.decode(ids) == text
    assert data.decode(data.encode("x€")[:-1]) == "x\ufffd"  # a cut multi-byte character


def test_stream_decoder_holds_back_partial_characters():
    decoder = data.ByteStreamDecoder()
    pieces = [decoder.push(b) for b in "a€b".encode()]
    assert pieces == ["a", "", "", "€", "b"]
    assert decoder.flush() == ""
    decoder.push(0xE2)  # first byte of a 3-byte character that never finishes
    assert decoder.flush() == "\ufffd"
    assert data.ByteStreamDecoder().push(0xFF) == "\ufffd"  # never valid UTF-8


def test_split_holds_out_the_tail():
    raw = bytes(range(200)) * 5
    split = data.split_corpus(raw, 0.1)
    assert len(split.val) == 100 and len(split.train) == 900
    assert torch.equal(torch.cat([split.train, split.val]), data.encode(raw))
    with pytest.raises(ValueError, match="val_fraction"):
        data.split_corpus(raw, 1.5)


def test_batches_are_seeded_and_shifted():
    ids = torch.arange(1000) % 256
    x1, y1 = data.sample_batch(ids, 4, 16, torch.Generator().manual_seed(3))
    x2, y2 = data.sample_batch(ids, 4, 16, torch.Generator().manual_seed(3))
    assert x1.shape == (4, 16) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])


def test_windows_cover_without_overlap():
    ids = torch.arange(35)
    x, y = data.windows(ids, 8)
    assert x.shape == (4, 8)
    assert torch.equal(x.reshape(-1), ids[:32]) and torch.equal(y.reshape(-1), ids[1:33])
    with pytest.raises(ValueError, match="context"):
        data.windows(ids[:8], 8)


def test_unigram_baseline():
    uniform = torch.arange(256).repeat(4)
    bits = data.unigram_bits(uniform, uniform)
    assert bits["cross_entropy"] == pytest.approx(8.0)
    assert bits["val_entropy"] == pytest.approx(8.0)
    assert data.nats_to_bits(math.log(2)) == pytest.approx(1.0)
