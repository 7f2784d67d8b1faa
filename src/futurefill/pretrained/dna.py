"""HyenaDNA's character tokenizer and FASTA prompts.

Ids: ``[CLS]``=0, ``[SEP]``=1 (end of sequence), ``[BOS]``=2, ``[MASK]``=3, ``[PAD]``=4,
``[RESERVED]``=5, ``[UNK]``=6, then A=7, C=8, G=9, T=10, N=11. The IUPAC ambiguity codes
(R, Y, K, M, S, W, B, D, H, V) map to ``[UNK]``, as HyenaDNA's tokenizer maps them; any other
character is an error unless ``lenient`` (then ``[UNK]`` too). Lower case (soft-masked repeats
in FASTA) is read as upper case. A generation prompt is ``[CLS]`` followed by the characters
(the tokenizer's ``[SEP]`` would end the sequence). :data:`NUCLEOTIDE_IDS` are the ids a
generation should choose from.
"""

from __future__ import annotations

import os

import torch

__all__ = [
    "CLS",
    "NUCLEOTIDE_IDS",
    "SEP",
    "SPECIAL_TOKENS",
    "UNK",
    "decode",
    "encode",
    "invalid_letters",
    "read_fasta",
    "read_fasta_text",
]

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
CLS, SEP, UNK = 0, 1, 6
CHARACTERS = "ACGTN"
IUPAC_CODES = "RYKMSWBDHV"
_IDS = {ch: i + len(SPECIAL_TOKENS) for i, ch in enumerate(CHARACTERS)}
NUCLEOTIDE_IDS = tuple(_IDS.values())  # A, C, G, T, N


def encode(sequence: str, *, lenient: bool = False) -> torch.Tensor:
    """``[CLS]`` + the ids of ``sequence``'s characters (whitespace skipped): ``(1 + n,)`` int64.

    A character that is neither a nucleotide (A, C, G, T, N) nor an IUPAC code is a ValueError
    naming it, unless ``lenient`` (then it is ``[UNK]``, as IUPAC codes are)."""
    letters = [ch for ch in sequence.upper() if not ch.isspace()]
    bad = "" if lenient else invalid_letters(sequence)
    if bad:
        raise ValueError(
            f"a DNA sequence holds A, C, G, T, N (or IUPAC codes), not {bad!r}; "
            "encode(..., lenient=True) reads other characters as [UNK]"
        )
    ids = [CLS] + [_IDS.get(ch, UNK) for ch in letters]
    return torch.tensor(ids, dtype=torch.int64)


def invalid_letters(sequence: str) -> str:
    """The characters of ``sequence`` that are neither nucleotides nor IUPAC codes (nor
    whitespace), upper-cased, sorted, the first ten."""
    letters = {ch for ch in sequence.upper() if not ch.isspace()}
    return "".join(sorted(letters - set(CHARACTERS) - set(IUPAC_CODES))[:10])


def decode(ids: torch.Tensor | list[int]) -> str:
    """Characters for ids 7..11, the special tokens' names in brackets for the others."""
    names = (*SPECIAL_TOKENS, *CHARACTERS)
    return "".join(names[i] if 0 <= i < len(names) else "[UNK]" for i in map(int, ids))


def read_fasta(path: str | os.PathLike) -> str:
    """The sequence lines of a FASTA (or plain) text file, concatenated; ``>`` header and ``;``
    comment lines are skipped. Raises ValueError when no sequence characters remain."""
    with open(path, encoding="utf-8") as file:
        return read_fasta_text(file.read(), os.fspath(path))


def read_fasta_text(text: str, name: str = "the text") -> str:
    """:func:`read_fasta` of a text already read (``name`` says where from, for the error)."""
    lines = [line.strip() for line in text.splitlines() if not line.startswith((">", ";"))]
    sequence = "".join(lines)
    if not sequence:
        raise ValueError(f"{name} holds no sequence (only headers or blank lines)")
    return sequence
