"""The demo model's training: deterministic for a seed, writes a loadable checkpoint and its
manifest."""

from __future__ import annotations

import json

import pytest
import torch

from futurefill.demo import data
from futurefill.demo.train import (
    HELDOUT_FILE,
    MANIFEST_FILE,
    TrainConfig,
    _lr_at,
    heldout_loss,
    train,
)
from futurefill.pretrained import load_pretrained

TINY = dict(
    d_model=16,
    n_layers=1,
    mlp_ratio=2,
    num_eigh=4,
    max_len=64,
    steps=3,
    batch_size=2,
    context=16,
    warmup=1,
    eval_every=2,
    heldout_windows=2,
)


@pytest.fixture(scope="module")
def small_corpus() -> bytes:
    return data.load_corpus()[:8000]


def test_same_seed_same_run(small_corpus, tmp_path):
    cfg = TrainConfig(**TINY, seed=5)
    first = train(cfg, tmp_path / "a", progress=False, data=small_corpus)
    second = train(cfg, tmp_path / "b", progress=False, data=small_corpus)
    assert first["history"] == second["history"]
    assert first["final_val"] == second["final_val"]
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()
    other = train(TrainConfig(**TINY, seed=6), None, progress=False, data=small_corpus)
    assert other["history"][0]["train_loss"] != first["history"][0]["train_loss"]


def test_checkpoint_and_manifest(small_corpus, tmp_path):

    cfg = TrainConfig(**TINY, save_every=2)  # an intermediate save at step 2, then the final
    manifest = train(cfg, tmp_path, progress=False, data=small_corpus)
    on_disk = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert on_disk["complete"] is True
    assert on_disk["steps_done"] == cfg.steps == len(on_disk["history"])
    assert [r["step"] for r in on_disk["history"] if "val_loss" in r] == [2, 3]
    assert on_disk["command"].startswith(f"futurefill train --out {tmp_path}")
    assert "--seed 0" in on_disk["command"]
    final = on_disk["final_val"]
    assert final["bits_per_byte"] == pytest.approx(data.nats_to_bits(final["loss_nats"]))
    assert on_disk["unigram_bits_per_byte"]["cross_entropy"] > 0
    assert on_disk["wall_time_s"] >= 0 and on_disk["machine"]["torch"] == torch.__version__
    assert (tmp_path / HELDOUT_FILE).stat().st_size == cfg.heldout_windows * cfg.context + 1
    model = load_pretrained(tmp_path)
    assert heldout_loss(model, tmp_path) == pytest.approx(
        manifest["heldout"]["loss_nats"], rel=1e-5
    )


def test_context_must_fit_max_len():
    with pytest.raises(ValueError, match="max_len"):
        train(TrainConfig(**{**TINY, "context": 64}), None, progress=False, data=b"x" * 5000)


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert _lr_at(0, cfg) == pytest.approx(0.1)
    assert _lr_at(9, cfg) == pytest.approx(1.0)
    assert _lr_at(10, cfg) == pytest.approx(1.0)
    assert _lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert all(_lr_at(s, cfg) >= _lr_at(s + 1, cfg) for s in range(10, 99))


def test_an_interrupted_checkpoint_leaves_the_previous_one(small_corpus, tmp_path, monkeypatch):
    from futurefill.demo import train as train_module

    train(TrainConfig(**TINY), tmp_path, progress=False, data=small_corpus)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    dumps = json.dumps

    def interrupted(obj, **kwargs):  # Ctrl-C while the manifest is written, the weights done
        if "steps_done" in obj:
            raise KeyboardInterrupt
        return dumps(obj, **kwargs)

    monkeypatch.setattr(train_module.json, "dumps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**TINY, seed=9), tmp_path, progress=False, data=small_corpus)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
