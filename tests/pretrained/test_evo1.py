"""Evo 1 (StripedHyena 1, Hugging Face layout) against what its original code computed on a tiny
random checkpoint (tests/fixtures/evo1_tiny: data, its NOTE.md says how it was made)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import futurefill
from futurefill.online import ENGINES
from futurefill.pretrained import CheckpointError, detect_format, load_pretrained
from futurefill.pretrained.tokenizers import CharTokenizer, tokenizer_for
from futurefill.testing import assert_decoding_matches_forward

FIXTURE = Path(__file__).parent.parent / "fixtures" / "evo1_tiny"
FLOAT32_RTOL = 1e-4


@pytest.fixture(scope="module")
def reference():
    return torch.load(FIXTURE / "reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def model():
    return load_pretrained(FIXTURE)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max())


def test_detected_as_evo1_with_its_tokenizer():
    assert detect_format(FIXTURE) == "evo1"
    assert isinstance(tokenizer_for("evo1"), CharTokenizer)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logits_match_the_original_code(reference, dtype):
    model = load_pretrained(FIXTURE, dtype=dtype)
    with torch.no_grad():
        logits = model(reference["ids"])
    assert logits.dtype == dtype
    assert relative_error(logits, reference["logits"]) < FLOAT32_RTOL


def test_the_long_filter_is_the_original_codes(model, reference):
    expected = reference["filter_h_layer0"]
    taps = model.blocks[0].filter.modal_filter().taps(expected.shape[1])
    assert relative_error(taps, expected) < FLOAT32_RTOL


def test_plain_rotary_when_not_interpolated(tmp_path, reference):
    for file in FIXTURE.iterdir():
        shutil.copy(file, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["use_interpolated_rotary_pos_emb"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    with torch.no_grad():
        last = load_pretrained(tmp_path)(reference["ids"])[:, -1]
    assert relative_error(last, reference["logits_last_rope_scale1"]) < FLOAT32_RTOL
    assert relative_error(last, reference["logits"][:, -1]) > 1e-3  # the scale matters


@pytest.mark.parametrize("method", ["modal", "continuous"])
def test_greedy_tokens_are_the_original_codes(model, reference, method):
    out = futurefill.generate(model, reference["ids"], max_new_tokens=8, method=method)
    assert out.tolist() == reference["greedy"].tolist()


def test_decoding_matches_the_forward_from_one_token_on(model):
    """The original code's cache is wrong after a 1-token prompt; ours is the forward's."""
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    assert_decoding_matches_forward(model, ids, methods=tuple(ENGINES), prompt_lens=[1, 2, 9])


def test_sharded_safetensors_load(tmp_path, model):
    state = load_file(FIXTURE / "model.safetensors")
    keys = sorted(state)
    halves = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, tmp_path / name)
    weight_map = {k: name for name, part in halves.items() for k in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    shutil.copy(FIXTURE / "config.json", tmp_path)
    loaded = load_pretrained(tmp_path)
    for (name, a), (_, b) in zip(
        loaded.state_dict().items(), model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hyena_layer_idxs": [0, 2]}, r"layers \[3\] are in none of"),
        ({"state_size": 4}, "has shape"),
        ({"proj_groups": 4}, "proj_groups=4 is not supported"),
        ({"vocab_size": None}, "vocab_size must be an int"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(tmp_path, change, message):
    for file in FIXTURE.iterdir():
        shutil.copy(file, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(tmp_path)


def test_missing_weights_are_refused(tmp_path):
    shutil.copy(FIXTURE / "config.json", tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_pretrained(tmp_path)
    state = load_file(FIXTURE / "model.safetensors")
    del state["backbone.blocks.0.filter.D"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"weights do not match the model: missing blocks\.0\.filter\.conv\.skip",
    ):
        load_pretrained(tmp_path)


def test_bfloat16_decodes_like_its_forward():
    """A half model keeps its poles float32; the engines give the activations' dtype back."""
    model = load_pretrained(FIXTURE, dtype=torch.bfloat16)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    assert_decoding_matches_forward(model, ids, methods=tuple(ENGINES), prompt_lens=[1, 6])
