"""The bundled demo checkpoint: its record (held-out loss, baseline) holds, and every method
generates the same text from it."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from futurefill.demo import data
from futurefill.demo.train import HELDOUT_FILE, MANIFEST_FILE, heldout_loss
from futurefill.generation import generate
from futurefill.pretrained import bundled_checkpoint_dir, load_pretrained

BUNDLED = bundled_checkpoint_dir()


@pytest.fixture(scope="module")
def model():
    return load_pretrained()


@pytest.fixture(scope="module")
def manifest():
    return json.loads((BUNDLED / MANIFEST_FILE).read_text())


def test_bundled_checkpoint_loads(model, manifest):
    assert model.config.vocab_size == data.VOCAB_SIZE
    assert model.config.max_len >= manifest["config"]["context"] + 512
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"]
    size = sum(f.stat().st_size for f in BUNDLED.iterdir())
    assert size < 8 * 2**20  # a few MB at most


def test_heldout_loss_matches_the_record(model, manifest):
    heldout = (BUNDLED / HELDOUT_FILE).read_bytes()
    record = manifest["heldout"]
    assert hashlib.sha256(heldout).hexdigest() == record["sha256"]
    assert heldout_loss(model, BUNDLED) == pytest.approx(record["loss_nats"], rel=1e-4)
    # The stored slice is the start of the validation split of the corpus it was trained on.
    raw = data.load_corpus()
    if data.corpus_sha256(raw) == manifest["corpus"]["sha256"]:
        val = data.split_corpus(raw, manifest["config"]["val_fraction"]).val
        assert bytes(val[: len(heldout)].tolist()) == heldout


def test_recorded_loss_beats_unigram(manifest):
    final = manifest["final_val"]
    assert manifest["complete"] is True
    assert final["bits_per_byte"] == pytest.approx(data.nats_to_bits(final["loss_nats"]))
    assert final["bits_per_byte"] < manifest["unigram_bits_per_byte"]["cross_entropy"] - 1.0


@pytest.mark.parametrize(
    "sampling",
    [{"do_sample": True, "temperature": 0.8, "top_k": 40}, {"do_sample": False}],
    ids=["sample", "greedy"],
)
def test_generation_identical_across_methods(model, sampling):
    # 2 ragged prompts x 300 tokens: long enough to cross epoch and FFT-level boundaries.
    first, second = data.encode("The with statement"), data.encode("class definitio")
    prompt = torch.zeros(2, len(first), dtype=torch.long)
    prompt[0], prompt[1, : len(second)] = first, second
    outputs = {}
    for method in ("naive", "epoched", "continuous"):
        generator = torch.Generator().manual_seed(1234)
        outputs[method] = generate(
            model,
            prompt,
            300,
            method=method,
            prompt_lengths=[len(first), len(second)],
            generator=generator,
            **sampling,
        )
    assert outputs["naive"].shape == (2, 300)
    assert torch.equal(outputs["naive"], outputs["epoched"])
    assert torch.equal(outputs["naive"], outputs["continuous"])
