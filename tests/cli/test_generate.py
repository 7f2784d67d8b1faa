"""``futurefill generate``: streaming, ``--compare``, the sampling options, and a broken checkpoint
reported in one line."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest
import torch

from futurefill.cli import generate, main
from futurefill.pretrained import CheckpointError, bundled_checkpoint_dir, load_pretrained

BUNDLED = bundled_checkpoint_dir()


def test_cli_streams_text(capsys):
    assert main(["generate", "def ", "--max-new-tokens", "24", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def ")
    assert len(out) > len("def ") + 5


def test_cli_compare(capsys):
    argv = ["generate", "The ", "--max-new-tokens", "20", "--compare", "--temperature", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "speedup vs naive" in out
    for method in ("naive", "epoched", "continuous"):
        assert f"\n{method} " in out
    assert "identical output from every method" in out


def test_cli_compare_reports_a_mismatch(monkeypatch, capsys):
    import futurefill.generation

    real = futurefill.generation.generate

    def broken(model, ids, n, *, method, **kwargs):
        out = real(model, ids, n, method=method, **kwargs)
        if method == "epoched":
            out[0, -1] = (out[0, -1] + 1) % 256
        return out

    monkeypatch.setattr(futurefill.generation, "generate", broken)
    assert main(["generate", "a", "--max-new-tokens", "5", "--compare"]) == 1
    err = capsys.readouterr().err
    assert "outputs differ" in err and "epoched" in err and "token 4" in err


def test_cli_top_k_top_p(capsys):
    argv = [
        "generate",
        "a",
        "--max-new-tokens",
        "8",
        "--do-sample",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
    ]
    outputs = []
    for method in ("naive", "epoched"):
        assert main([*argv, "--method", method]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("a")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max-new-tokens", "100000"], "max_len"),
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--temperature", "-1"], "--temperature"),
        (["--compare", "--repeats", "0"], "--repeats"),
    ],
)
def test_cli_rejects_bad_options(option, message, capsys):
    assert main(["generate", "a", *option]) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- broken checkpoints


@pytest.fixture
def copy(tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(BUNDLED, target)
    return target


def _cli_error(directory, capsys) -> str:
    assert main(["generate", "x", "--max-new-tokens", "2", "--checkpoint", str(directory)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("futurefill generate: error: ")
    return lines[0]


def test_missing_directory(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_pretrained(tmp_path / "nope")
    assert "nope" in _cli_error(tmp_path / "nope", capsys)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_missing_file(copy, name, capsys):
    (copy / name).unlink()
    with pytest.raises(CheckpointError, match=re.escape(name)):
        load_pretrained(copy, format="futurefill")
    assert name in _cli_error(copy, capsys)


def test_truncated_weights(copy, capsys):
    path = copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        load_pretrained(copy)
    assert "model.safetensors" in _cli_error(copy, capsys)


def test_garbage_weights(copy, capsys):
    (copy / "model.safetensors").write_bytes(b"\x00" * 64)
    assert "model.safetensors" in _cli_error(copy, capsys)


def test_bad_json(copy, capsys):
    (copy / "config.json").write_text('{"vocab_size": 256,')
    with pytest.raises(ValueError, match=r"config\.json"):
        load_pretrained(copy)
    assert "config.json" in _cli_error(copy, capsys)


def test_config_unknown_field(copy, capsys):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "n_heads": 4}))
    with pytest.raises(ValueError, match=r"config\.json is invalid"):
        load_pretrained(copy)
    assert "n_heads" in _cli_error(copy, capsys)


def test_config_mismatching_weights(copy, capsys):
    config = json.loads((copy / "config.json").read_text())
    config["d_model"] = config["d_model"] * 2
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights do not match"):
        load_pretrained(copy)
    assert "weights do not match config.json" in _cli_error(copy, capsys)


def test_integer_weights_are_refused_in_one_line(copy, capsys):
    from safetensors.torch import save_file

    save_file({"embed.weight": torch.zeros(2, 2, dtype=torch.int32)}, copy / "model.safetensors")
    with pytest.raises(CheckpointError, match="holds I32 tensors; a model's weights are floating"):
        load_pretrained(copy)
    assert "holds I32 tensors" in _cli_error(copy, capsys)


def test_an_empty_config_is_the_config_that_is_wrong(copy, capsys):
    (copy / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"config\.json is missing fields \['vocab_size'"):
        load_pretrained(copy)
    assert "is missing fields" in _cli_error(copy, capsys)


# --------------------------------------------------------------------------- output


def test_streamer_decodes_multibyte_characters():
    stream = io.StringIO()
    streamer = generate.TextStreamer(stream)
    seen = []
    for byte in "é€!".encode():
        streamer(torch.tensor([byte, 0]))  # sequence 0 only
        seen.append(stream.getvalue())
    assert seen == ["", "é", "é", "é", "é€", "é€!"]
    streamer(torch.tensor([0xE2]))  # a character that never finishes
    streamer.end()
    assert stream.getvalue() == "é€!\ufffd\n"


def test_a_vocabulary_smaller_than_the_tokenizers_is_refused_up_front(tmp_path, capsys):
    from futurefill import ConvLM, ConvLMConfig

    ConvLM(ConvLMConfig(vocab_size=100, d_model=8, n_layers=1, max_len=64)).save(tmp_path)
    line = _cli_error(tmp_path, capsys)
    assert line.endswith("its vocabulary has 100 tokens, fewer than the bytes tokenizer's 256")


def test_non_finite_weights_are_one_line_before_any_output(tmp_path, capsys):
    from futurefill import ConvLM, ConvLMConfig

    model = ConvLM(ConvLMConfig(d_model=8, n_layers=1, max_len=64))
    with torch.no_grad():
        model.norm.weight[0] = float("nan")
    model.save(tmp_path)
    argv = ["generate", "hello", "--model", str(tmp_path), "--max-new-tokens", "5"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # not even the echo
    assert captured.err.strip().splitlines() == [
        "futurefill generate: error: the model's logits are not finite (NaN or inf) for sequence "
        "0 at generated token 0 (position 4): check the model's weights and dtype"
    ]


def test_prompt_from_standard_input_is_echoed_like_a_positional_one(monkeypatch, capsys):
    argv = ["generate", "--max-new-tokens", "12"]
    assert main([*argv, "The with"]) == 0
    positional = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("The with"))
    assert main([*argv, "--prompt-file", "-"]) == 0
    assert capsys.readouterr().out == positional
    assert main([*argv, "The with", "--no-echo"]) == 0
    assert "The with" + capsys.readouterr().out == positional
