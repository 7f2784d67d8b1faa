"""The bundled demo checkpoint and ``futurefill generate``."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil

import pytest
import torch

from futurefill import data, textgen
from futurefill.cli import main
from futurefill.generation import generate
from futurefill.pretrained import CheckpointError, bundled_checkpoint_dir, load_pretrained
from futurefill.train import HELDOUT_FILE, MANIFEST_FILE, heldout_loss

BUNDLED = bundled_checkpoint_dir()


@pytest.fixture(scope="module")
def model():
    return load_pretrained()


@pytest.fixture(scope="module")
def manifest():
    return json.loads((BUNDLED / MANIFEST_FILE).read_text())


# --------------------------------------------------------------------------- bundled checkpoint


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


# --------------------------------------------------------------------------- command line


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


def test_compare_catches_a_repeat_that_differs(model, monkeypatch):
    import futurefill.generation

    real, calls = futurefill.generation.generate, []

    def flaky(model, ids, n, *, method, **kwargs):
        out = real(model, ids, n, method=method, **kwargs)
        if method == "continuous" and n == 6:
            calls.append(1)
            if len(calls) == 2:  # the second timed run of continuous
                out[0, 2] = (out[0, 2] + 1) % 256
        return out

    monkeypatch.setattr(futurefill.generation, "generate", flaky)
    results = textgen.compare_methods(model, data.encode("ab")[None], 6, repeats=3)
    assert [r.method for r in results] == [*textgen.METHOD_ORDER, "continuous (repeat 2)"]
    assert "continuous (repeat 2) differs from naive at generated token 2" in (
        textgen.mismatch(results)
    )
    with pytest.raises(ValueError, match="repeats"):
        textgen.compare_methods(model, data.encode("ab")[None], 6, repeats=0)


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


# --------------------------------------------------------------------------- helpers


def test_streamer_decodes_multibyte_characters():
    stream = io.StringIO()
    streamer = textgen.TextStreamer(stream)
    seen = []
    for byte in "é€!".encode():
        streamer(torch.tensor([byte, 0]))  # sequence 0 only
        seen.append(stream.getvalue())
    assert seen == ["", "é", "é", "é", "é€", "é€!"]
    streamer(torch.tensor([0xE2]))  # a character that never finishes
    streamer.end()
    assert stream.getvalue() == "é€!\ufffd\n"


def test_table_and_mismatch():
    ids = torch.zeros(1, 10, dtype=torch.long)
    results = [
        textgen.CompareResult("naive", ids, 2.0),
        textgen.CompareResult("continuous", ids.clone(), 0.5),
    ]
    table = textgen.format_table(results)
    assert "4.00x" in table and "1.00x" in table and "20.0" in table
    assert textgen.mismatch(results) is None
    results[1].tokens[0, 7] = 3
    assert "token 7" in textgen.mismatch(results)


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
