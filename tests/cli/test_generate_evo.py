"""``futurefill generate --model DIR``: Evo checkpoints from the command line (Evo's tokenizer,
the modal method, prompts in pieces, FASTA prompt files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from futurefill import generate, load_pretrained
from futurefill.cli import main
from futurefill.pretrained.tokenizers import CharTokenizer

EVO1 = str(Path(__file__).parent.parent / "fixtures" / "evo1_tiny")


def expected_text(prompt: str, n: int) -> str:
    tokenizer = CharTokenizer()
    tokens = generate(load_pretrained(EVO1), torch.tensor([tokenizer.encode(prompt)]), n)
    decoder = tokenizer.stream_decoder()
    return "".join(decoder.push(int(t)) for t in tokens[0])


@pytest.mark.parametrize(
    "extra", [[], ["--method", "modal"], ["--method", "modal", "--prefill-chunk", "3"]]
)
def test_evo_generation_prints_its_characters(extra, capsys):
    argv = ["generate", "ACGTTGCAAC", "--model", EVO1, "--max-new-tokens", "12", *extra]
    assert main(argv) == 0
    assert capsys.readouterr().out == "ACGTTGCAAC" + expected_text("ACGTTGCAAC", 12) + "\n"


def test_a_fasta_prompt_file(tmp_path, capsys):
    fasta = tmp_path / "seq.fa"
    fasta.write_text(">chr1 a header\nACGT\nTGCA\n")
    argv = ["generate", "--prompt-file", str(fasta), "--model", EVO1, "--max-new-tokens", "5"]
    assert main([*argv, "--no-echo"]) == 0
    assert capsys.readouterr().out == expected_text("ACGTTGCA", 5) + "\n"


def test_a_bad_prefill_chunk_is_one_line(capsys):
    argv = ["generate", "ACGT", "--model", EVO1, "--prefill-chunk", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --prefill-chunk" in err


def test_compare_runs_every_method_with_the_prefill_chunk(monkeypatch, capsys):
    """--compare passes --prefill-chunk to every run (it was accepted and ignored)."""
    from futurefill import generation

    chunks = []
    real = generation.generate

    def spy(*args, prefill_chunk=None, **kwargs):
        chunks.append(prefill_chunk)
        return real(*args, prefill_chunk=prefill_chunk, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    argv = ["generate", "ACGTTGCAAC", "--model", EVO1, "--max-new-tokens", "6"]
    assert main([*argv, "--compare", "--repeats", "1", "--prefill-chunk", "3"]) == 0
    assert "identical output from every method" in capsys.readouterr().out
    assert chunks and set(chunks) == {3}
