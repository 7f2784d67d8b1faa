"""``futurefill generate --model DIR``: HyenaDNA checkpoints from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from futurefill import generate, load_pretrained
from futurefill.cli import main
from futurefill.pretrained import dna

FIXTURES = Path(__file__).parent.parent / "fixtures" / "pretrained"
HF = str(FIXTURES / "hyenadna-hf")


def expected_text(directory: str, prompt: str, n: int) -> str:
    model = load_pretrained(directory)
    allowed = dna.NUCLEOTIDE_IDS  # the command line's default for a DNA model
    tokens = generate(model, dna.encode(prompt)[None], max_new_tokens=n, allowed_token_ids=allowed)
    return dna.decode(tokens[0])


@pytest.mark.parametrize("case", ["hyenadna-hf", "hyenadna-order2"])
def test_greedy_dna_generation_streams_the_models_tokens(case, capsys):
    directory = str(FIXTURES / case)
    argv = ["generate", "ACGTTGCA", "--model", directory, "--max-new-tokens", "12"]
    assert main([*argv, "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out == "ACGTTGCA" + expected_text(directory, "ACGTTGCA", 12) + "\n"


def test_compare_checks_every_method_on_a_dna_model(capsys):
    argv = ["generate", "ACGT", "--model", HF, "--max-new-tokens", "10", "--compare"]
    assert main([*argv, "--repeats", "1", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert (
        "identical output from every method (naive, epoched, continuous, deamortized): 10 tokens"
        in out
    )


def test_prompt_file_reads_fasta(tmp_path, capsys):
    fasta = tmp_path / "prompt.fa"
    fasta.write_text(">chr1:1-40 test\nACGTACGTAC\nggccaattNN\n")
    argv = ["generate", "--prompt-file", str(fasta), "--model", HF, "--max-new-tokens", "6"]
    assert main([*argv, "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    expected = expected_text(HF, "ACGTACGTACggccaattNN", 6)
    assert out == "ACGTACGTACggccaattNN" + expected + "\n"  # the sequence echoed, as a prompt is
    assert main([*argv, "--no-echo"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_sampling_is_seeded(capsys):
    argv = ["generate", "ACGT", "--model", HF, "--max-new-tokens", "15", "--seed", "4"]
    argv += ["--do-sample"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "HELLO", "--model", HF], "a HyenaDNA prompt holds A, C, G, T, N"),
        (["generate", "ACGT", "--model", HF, "--max-new-tokens", "70"], "max_len 70"),
        (["generate", "--model", HF], "a prompt (or --prompt-file) is required"),
        (["generate", "AC", "--prompt-file", "x.fa", "--model", HF], "not both"),
        (["generate", "--prompt-file", "/no/such.fa", "--model", HF], "argument --prompt-file"),
        (["generate", "AC", "--model", "/no/such/dir"], "checkpoint directory not found"),
        (
            ["generate", "AC", "--model", str(FIXTURES / "safari-order3")],
            "uses the GPT-2 tokenizer",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err


def test_a_broken_checkpoint_is_one_line(tmp_path, capsys):
    import shutil

    directory = shutil.copytree(FIXTURES / "hyenadna-hf", tmp_path / "broken")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["generate", "AC", "--model", str(directory)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.safetensors is truncated or corrupt" in err[0]


def test_tokens_equal_the_python_api_for_a_one_token_prompt():
    model = load_pretrained(HF)
    prompt = dna.encode("")[None]  # [CLS] only
    assert prompt.shape == (1, 1)
    tokens = generate(model, prompt, max_new_tokens=8, method="continuous")
    with torch.no_grad():
        ids = prompt
        for _ in range(8):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(tokens, ids[:, 1:])


def test_trust_pickle_opens_a_lightning_checkpoint_with_objects(tmp_path, capsys):
    import shutil

    directory = shutil.copytree(FIXTURES / "hyenadna-order2", tmp_path / "release")
    content = torch.load(directory / "weights.ckpt")
    content["hyper_parameters"] = Path("an/object")  # as Lightning stores its config
    torch.save(content, directory / "weights.ckpt")
    argv = ["generate", "ACGT", "--model", str(directory), "--max-new-tokens", "5"]
    assert main([*argv, "--temperature", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-pickle" in err[0]
    assert main([*argv, "--temperature", "0", "--trust-pickle"]) == 0
    expected = expected_text(str(FIXTURES / "hyenadna-order2"), "ACGT", 5)
    assert capsys.readouterr().out == "ACGT" + expected + "\n"


def test_dna_generation_chooses_nucleotides_unless_told_otherwise(capsys):
    model = load_pretrained(HF)
    prompt = dna.encode("ACGTTGCA")[None]
    free = generate(
        model, prompt, max_new_tokens=40, do_sample=True, generator=torch.Generator().manual_seed(0)
    )
    assert set(free[0].tolist()) - set(dna.NUCLEOTIDE_IDS)  # the tiny random model's choice
    argv = ["generate", "ACGTTGCA", "--model", HF, "--max-new-tokens", "40", "--do-sample"]
    assert main([*argv, "--no-echo"]) == 0
    assert set(capsys.readouterr().out.strip()) <= set("ACGTN")
    assert main([*argv, "--no-echo", "--allow-special-tokens"]) == 0
    assert "[" in capsys.readouterr().out
