"""load_pretrained: the original code's logits (fixtures), every layout, every bad checkpoint."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from futurefill import METHODS, generate, load_pretrained
from futurefill.pretrained import CheckpointError, HyenaLM, detect_format
from futurefill.testing import assert_decoding_matches_forward
from pretrained.checkpoints import random_hyena_lm, write_hf, write_hyenadna, write_safari

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pretrained"
CASES = {
    "hyenadna-order2": "hyenadna",
    "hyenadna-order3-ckptnames": "hyenadna",
    "hyenadna-hf": "hyenadna-hf",
    "safari-order3": "safari",
    "safari-order2-normalized": "safari",
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# --------------------------------------------------------------------------- the original code


@pytest.mark.parametrize("case", CASES)
def test_logits_match_the_original_code(case):
    reference = torch.load(FIXTURES / f"{case}.reference.pt")
    assert detect_format(FIXTURES / case) == CASES[case]
    model = load_pretrained(FIXTURES / case)
    assert isinstance(model, HyenaLM) and not model.training
    with torch.no_grad():
        logits = model(reference["ids"])
    assert logits.dtype == torch.float32
    assert logits.shape == reference["logits"].shape
    assert rel_err(logits, reference["logits"]) < 1e-5


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens_match_the_original_code_with_every_method(case):
    reference = torch.load(FIXTURES / f"{case}.reference.pt")
    model = load_pretrained(FIXTURES / case)
    for method in METHODS:
        tokens = generate(model, reference["prompt"], max_new_tokens=20, method=method)
        assert torch.equal(tokens, reference["greedy"]), method


@pytest.mark.parametrize("case", CASES)
def test_decoding_matches_the_forward_in_float64(case):
    model = load_pretrained(FIXTURES / case, dtype=torch.float64)
    ids = torch.load(FIXTURES / f"{case}.reference.pt")["ids"][:, :31]
    assert_decoding_matches_forward(model, ids, prompt_lens=(0, 1, 17))


def test_a_changed_detail_is_caught_by_the_reference():
    """The fixtures can fail: reading safari's order-3 filters order-major gives other logits."""
    reference = torch.load(FIXTURES / "safari-order3.reference.pt")
    model = load_pretrained(FIXTURES / "safari-order3")
    wrong = HyenaLM(dataclasses.replace(model.config, filter_layout="order-major"))
    wrong.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert rel_err(wrong(reference["ids"]), reference["logits"]) > 1e-2


# --------------------------------------------------------------------------- every layout


@pytest.mark.parametrize(
    "writer, options, semantics",
    [
        (write_hf, {}, {}),
        (write_hf, {"all_freq_names": True}, {}),
        (write_hf, {"weights": "bin"}, {}),
        (write_hyenadna, {}, {"tie_embeddings": True}),
        (write_hyenadna, {"checkpoint_names": True}, {"order": 3}),
        (write_safari, {}, {"modulation_shift": 0.0, "filter_layout": "channel-major", "order": 4}),
        (
            write_safari,
            {"bias": False, "normalized": True, "shift": 0.2},
            {"use_bias": False, "normalized": True, "modulation_shift": 0.2},
        ),
    ],
    ids=[
        "hf",
        "hf-all-freq",
        "hf-bin",
        "hyenadna",
        "hyenadna-ckpt-order3",
        "safari",
        "safari-opts",
    ],
)
def test_each_layout_loads_to_the_same_logits(tmp_path, writer, options, semantics):
    if writer is write_safari:
        semantics = {"filter_layout": "channel-major", "modulation_shift": 0.0, **semantics}
    model = random_hyena_lm(dtype=torch.float32, **semantics)
    directory = writer(model, tmp_path / "ckpt", **options)
    loaded = load_pretrained(directory)
    ids = torch.randint(0, 12, (3, 29))
    with torch.no_grad():
        assert rel_err(loaded(ids), model(ids)) < 1e-6
    assert loaded.config.tie_embeddings == model.config.tie_embeddings


@pytest.mark.parametrize("case", ["hyenadna-order2", "safari-order3", "hyenadna-hf"])
def test_a_converted_checkpoint_loads_from_safetensors_bit_identical(tmp_path, case):
    model = load_pretrained(FIXTURES / case)
    directory = model.save(tmp_path / "converted")
    assert detect_format(directory) == "futurefill-hyenalm"
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    again = load_pretrained(directory)
    assert again.config == model.config
    ids = torch.load(FIXTURES / f"{case}.reference.pt")["ids"]
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))
    edit_config(directory, n_heads=4)
    with pytest.raises(CheckpointError, match=r"config\.json: unknown field: 'n_heads'"):
        load_pretrained(directory)


def test_untied_head_in_an_original_checkpoint_stays_untied(tmp_path):
    model = random_hyena_lm(dtype=torch.float32)  # separate lm_head, other values
    loaded = load_pretrained(write_hyenadna(model, tmp_path / "ckpt"))
    assert not loaded.config.tie_embeddings
    ids = torch.randint(0, 12, (2, 20))
    with torch.no_grad():
        assert rel_err(loaded(ids), model(ids)) < 1e-6


def test_device_and_dtype(tmp_path):
    directory = write_hf(random_hyena_lm(dtype=torch.float32), tmp_path / "ckpt")
    model = load_pretrained(directory, dtype=torch.float64, device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert {b.dtype for b in model.buffers()} == {torch.float64}


def test_futurefill_directory_loads_a_convlm(tmp_path):
    from futurefill import ConvLM, ConvLMConfig

    model = ConvLM(ConvLMConfig(d_model=16, n_layers=1, max_len=32))
    model.save(tmp_path / "own")
    assert detect_format(tmp_path / "own") == "futurefill"
    loaded = load_pretrained(tmp_path / "own")
    ids = torch.randint(0, 256, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_inputs_longer_than_max_len_are_an_error_not_a_truncation():
    model = random_hyena_lm()
    with pytest.raises(ValueError, match="sequence length 49 exceeds the model's max_len 48"):
        model(torch.zeros(1, 49, dtype=torch.int64))


# --------------------------------------------------------------------------- bad checkpoints


@pytest.fixture
def hf_dir(tmp_path) -> Path:
    return write_hf(random_hyena_lm(dtype=torch.float32), tmp_path / "hf")


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_state(file: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(file))
    change(state)
    save_file(state, str(file))


def test_missing_directory_and_files(tmp_path, hf_dir):
    with pytest.raises(CheckpointError, match=r"checkpoint directory not found: .*nowhere"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_pretrained(tmp_path / "empty")
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint file not found: .*model\.safetensors"):
        load_pretrained(hf_dir)


def test_truncated_weight_files(tmp_path, hf_dir):
    file = hf_dir / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated or corrupt"):
        load_pretrained(hf_dir)
    directory = write_hyenadna(random_hyena_lm(dtype=torch.float32), tmp_path / "orig")
    ckpt = directory / "weights.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"weights\.ckpt is truncated or corrupt"):
        load_pretrained(directory)


def test_pickles_with_objects_need_trust(tmp_path):
    directory = write_hyenadna(random_hyena_lm(dtype=torch.float32), tmp_path / "orig")
    ckpt = directory / "weights.ckpt"
    content = torch.load(ckpt)
    content["hyper_parameters"] = Path("not/a/tensor")  # any non-allowlisted object
    torch.save(content, ckpt)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        load_pretrained(directory)
    assert isinstance(load_pretrained(directory, trust_pickle=True), HyenaLM)


def test_unknown_model_type_and_bad_json(hf_dir):
    edit_config(hf_dir, model_type="mamba")
    with pytest.raises(CheckpointError, match="model_type 'mamba' is not supported"):
        load_pretrained(hf_dir)
    (hf_dir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_pretrained(hf_dir)


def test_missing_and_unexpected_keys(hf_dir):
    file = hf_dir / "model.safetensors"
    edit_state(file, lambda s: s.pop("hyena.backbone.layers.1.mlp.fc2.bias"))
    with pytest.raises(CheckpointError, match=r"missing backbone\.layers\.1\.mlp\.fc2\.bias"):
        load_pretrained(hf_dir)


def test_unexpected_keys(hf_dir):
    def add(state):
        state["hyena.backbone.layers.0.mixer.Wqkv.weight"] = torch.zeros(3)

    edit_state(hf_dir / "model.safetensors", add)
    with pytest.raises(CheckpointError, match=r"unexpected backbone\.layers\.0\.mixer\.Wqkv"):
        load_pretrained(hf_dir)


def test_shape_mismatch_with_the_config(hf_dir):
    edit_config(hf_dir, d_inner=40)
    with pytest.raises(
        CheckpointError, match=r"backbone\.layers\.0\.mlp\.fc1\.weight has shape \(24, 8\), but "
    ):
        load_pretrained(hf_dir)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"d_model": 0}, "d_model must be an int >= 1, got 0"),
        ({"emb_dim": 4}, "emb_dim must be an odd int >= 3, got 4"),
        ({"hyena_order": 3}, "hyena_order must be 2 for the HF port"),
        ({"short_filter_order": 4}, "short_filter_order must be 3 for the HF port"),
        ({"num_inner_mlps": -1}, "num_inner_mlps must be an int >= 0"),
        ({"layer_norm_epsilon": "x"}, "final_norm_eps must be a finite number"),
        ({"vocab_size": None}, "vocab_size must be an int >= 1"),
        ({"max_seq_len": 2.5}, "max_seq_len must be an int >= 1"),
    ],
)
def test_config_fields_out_of_range(hf_dir, change, message):
    edit_config(hf_dir, **change)
    with pytest.raises(CheckpointError, match=r"config\.json: " + message):
        load_pretrained(hf_dir)


def test_missing_config_field(hf_dir):
    config = json.loads((hf_dir / "config.json").read_text())
    del config["n_layer"]
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: missing field 'n_layer'"):
        load_pretrained(hf_dir)


@pytest.mark.parametrize(
    "option", [{"num_heads": 2}, {"outer_mixing": True}, {"activation": "gelu"}]
)
def test_unsupported_safari_options(tmp_path, option):
    model = random_hyena_lm(filter_layout="channel-major", modulation_shift=0.0)
    directory = write_safari(model, tmp_path / "s", **option)
    (key,) = option
    with pytest.raises(CheckpointError, match=rf"hyena_small\.yaml: layer\.{key}=.* not supported"):
        load_pretrained(directory)


def test_bad_format_argument(hf_dir):
    with pytest.raises(ValueError, match="format must be one of"):
        load_pretrained(hf_dir, format="gguf")


def test_nothing_is_read_from_an_error_path(tmp_path):
    """A failed load leaves the directory as it was (nothing written next to the checkpoint)."""
    source = FIXTURES / "hyenadna-hf"
    directory = shutil.copytree(source, tmp_path / "copy")
    edit_config(directory, d_inner=7)
    before = sorted(p.name for p in directory.iterdir())
    with pytest.raises(CheckpointError):
        load_pretrained(directory)
    assert sorted(p.name for p in directory.iterdir()) == before


def test_untrusted_pickle_error_is_ours_in_one_plain_line(tmp_path):
    directory = write_hyenadna(random_hyena_lm(dtype=torch.float32), tmp_path / "orig")
    ckpt = directory / "weights.ckpt"
    content = torch.load(ckpt)
    content["hyper_parameters"] = Path("not/a/tensor")
    torch.save(content, ckpt)
    with pytest.raises(CheckpointError) as error:
        load_pretrained(directory)
    message = str(error.value)
    assert "\x1b" not in message and "\n" not in message  # no terminal codes, one line
    assert message.endswith("load with trust_pickle=True (--trust-pickle on the command line)")


class Evil:
    """A class the loading process cannot import (it lives in this test module only)."""


def test_a_trusted_pickle_naming_a_missing_class_is_a_checkpoint_error(tmp_path, monkeypatch):
    directory = write_hyenadna(random_hyena_lm(dtype=torch.float32), tmp_path / "orig")
    ckpt = directory / "weights.ckpt"
    content = torch.load(ckpt)
    content["hyper_parameters"] = Evil()
    Evil.__module__ = "__main__"  # pickled by reference to a module that will not have it
    monkeypatch.setattr("__main__.Evil", Evil, raising=False)
    torch.save(content, ckpt)
    monkeypatch.delattr("__main__.Evil")
    with pytest.raises(CheckpointError, match=r"whose code is not importable here \(Can't get"):
        load_pretrained(directory, trust_pickle=True)


def test_integer_weights_are_a_checkpoint_error(hf_dir):
    from safetensors.torch import load_file, save_file

    file = hf_dir / "model.safetensors"
    state = {k: v.to(torch.int32) for k, v in load_file(str(file)).items()}
    save_file(state, str(file))
    with pytest.raises(CheckpointError, match=r"model\.safetensors holds int32 weights"):
        load_pretrained(hf_dir)
