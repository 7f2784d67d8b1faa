"""HyenaDNA's character tokenizer and FASTA prompts.

Ids: ``[CLS]``=0, ``[SEP]``=1 (end of sequence), ``[BOS]``=2, ``[MASK]``=3, ``[PAD]``=4,
``[RESERVED]``=5, ``[UNK]``=6, then A=7, C=8, G=9, T=10, N=11. Characters outside ``ACGTN`` map to
``[UNK]``; lower case (soft-masked repeats in FASTA) is read as upper case. A generation prompt
is ``[CLS]`` followed by the characters (the tokenizer's ``[SEP]`` would end the sequence).
"""

from __future__ import annotations

import os

import torch

__all__ = ["CLS", "SEP", "SPECIAL_TOKENS", "UNK", "decode", "encode", "read_fasta"]

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
CLS, SEP, UNK = 0, 1, 6
CHARACTERS = "ACGTN"
_IDS = {ch: i + len(SPECIAL_TOKENS) for i, ch in enumerate(CHARACTERS)}


def encode(sequence: str) -> torch.Tensor:
    """``[CLS]`` + the ids of ``sequence``'s characters (whitespace skipped): ``(1 + n,)`` int64."""
    ids = [CLS] + [_IDS.get(ch, UNK) for ch in sequence.upper() if not ch.isspace()]
    return torch.tensor(ids, dtype=torch.int64)


def decode(ids: torch.Tensor | list[int]) -> str:
    """Characters for ids 7..11, the special tokens' names in brackets for the others."""
    names = (*SPECIAL_TOKENS, *CHARACTERS)
    return "".join(names[i] if 0 <= i < len(names) else "[UNK]" for i in map(int, ids))


def read_fasta(path: str | os.PathLike) -> str:
    """The sequence lines of a FASTA (or plain) text file, concatenated; ``>`` header and ``;``
    comment lines are skipped. Raises ValueError when no sequence characters remain."""
    with open(path, encoding="utf-8") as file:
        lines = [line.strip() for line in file if not line.startswith((">", ";"))]
    sequence = "".join(lines)
    if not sequence:
        raise ValueError(f"{os.fspath(path)} holds no sequence (only headers or blank lines)")
    return sequence
