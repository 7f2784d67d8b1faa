"""HyenaDNA's character tokenizer and FASTA prompts."""

from __future__ import annotations

import pytest
import torch

from futurefill.pretrained import dna


def test_ids_follow_the_hyenadna_vocabulary():
    assert dna.encode("ACGTN").tolist() == [0, 7, 8, 9, 10, 11]
    assert dna.encode("acgt r\n").tolist() == [0, 7, 8, 9, 10, 6]  # lower case, IUPAC, spaces
    with pytest.raises(ValueError, match=r"not 'ELOU'; encode\(..., lenient=True\)"):
        dna.encode("hello world ACGU")
    assert dna.encode("ACGU x", lenient=True).tolist() == [0, 7, 8, 9, 6, 6]
    assert dna.NUCLEOTIDE_IDS == (7, 8, 9, 10, 11)
    assert dna.encode("").tolist() == [0]
    assert dna.decode(torch.tensor([7, 8, 9, 10, 11, 1, 4])) == "ACGTN[SEP][PAD]"


def test_read_fasta_skips_headers_and_comments(tmp_path):
    path = tmp_path / "seq.fa"
    path.write_text(">chr1 test\nACGT\nacgn\n;comment\n\n>chr2\nTT\n")
    assert dna.read_fasta(path) == "ACGTacgnTT"
    path.write_text(">only a header\n")
    with pytest.raises(ValueError, match="holds no sequence"):
        dna.read_fasta(path)
