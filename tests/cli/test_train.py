"""``futurefill train``: every field of the training config is an option, and a run from the
command line writes a checkpoint."""

from __future__ import annotations

import dataclasses

from futurefill.cli import main, train
from futurefill.demo.train import TrainConfig

TINY = dict(
    d_model=16,
    n_layers=1,
    mlp_ratio=2,
    num_eigh=4,
    max_len=64,
    steps=1,
    batch_size=2,
    context=16,
    warmup=1,
    eval_every=2,
    heldout_windows=2,
)


def test_cli_trains(tmp_path, capsys):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert main(["train", "--out", str(tmp_path), "--quiet", *args]) == 0
    assert "bits/byte" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors").is_file()


def test_train_options_cover_its_config():
    assert set(train._options()) == {f.name for f in dataclasses.fields(TrainConfig)}
