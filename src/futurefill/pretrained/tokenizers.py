"""The tokenizers of the models futurefill loads: text to ids and ids back to text, one token at
a time (what streaming needs).

* :class:`ByteTokenizer`: UTF-8 bytes (the bundled ConvLM and ``ConvLM.save`` directories);
* :class:`CharTokenizer`: Evo 2 / Evo 1's: a UTF-8 byte per id in, a character per id out;
* :class:`DnaTokenizer`: HyenaDNA's characters (:mod:`futurefill.pretrained.dna`), a generation
  choosing among the nucleotides unless told otherwise, ``[SEP]`` ending a sequence.

:func:`tokenizer_for` gives the tokenizer of a checkpoint format (None: its tokenizer is not
bundled, e.g. the safari LMs' GPT-2 one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from futurefill.demo.data import ByteStreamDecoder, encode
from futurefill.pretrained import detect_format, dna, load_pretrained

__all__ = [
    "ByteTokenizer",
    "CharTokenizer",
    "DnaTokenizer",
    "StreamDecoder",
    "Tokenizer",
    "decode",
    "load_with_tokenizer",
    "tokenizer_for",
]


class StreamDecoder(Protocol):
    """Text of tokens arriving one at a time: ``push(token) -> str`` (what is complete now),
    ``flush() -> str`` (what is left at the end)."""

    def push(self, token: int) -> str: ...

    def flush(self) -> str: ...


class Tokenizer(Protocol):
    name: str
    vocab_size: int  # the ids it produces are below this
    eos_token_id: int | None
    eos_token: str | None  # its text (the tokenizer endpoints report it)
    allowed_token_ids: tuple[int, ...] | None  # what a generation chooses among by default

    def encode(self, text: str) -> list[int]: ...

    def stream_decoder(self) -> StreamDecoder: ...

    def token_string(self, token: int) -> str:
        """One token as text on its own (the API's ``logprobs.tokens``)."""
        ...


def decode(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """The text of ``ids`` (a whole sequence: what its stream decoder gives, flushed)."""
    stream = tokenizer.stream_decoder()
    return "".join(stream.push(token) for token in ids) + stream.flush()


class ByteTokenizer:
    """UTF-8 bytes: ids 0-255."""

    name = "bytes"
    vocab_size = 256
    eos_token_id = None
    eos_token = None
    allowed_token_ids = None

    def encode(self, text: str) -> list[int]:
        """ValueError for text that is not valid Unicode (lone surrogates)."""
        try:
            return encode(text).tolist()
        except UnicodeEncodeError:
            raise ValueError("the text is not valid UTF-8") from None

    def stream_decoder(self) -> ByteStreamDecoder:
        return ByteStreamDecoder()

    def token_string(self, token: int) -> str:
        """An ASCII byte as its character; any other (not text on its own: part of a multi-byte
        UTF-8 character) as ``bytes:\\xNN``, vLLM's convention."""
        return chr(token) if token < 0x80 else f"bytes:\\x{token:02x}"


class _CharStreamDecoder:
    def push(self, token: int) -> str:
        return chr(max(32, min(token, CharTokenizer.vocab_size)))

    def flush(self) -> str:
        return ""


class CharTokenizer:
    """Evo's character-level tokenizer (vortex's ``CharLevelTokenizer``): text in as its UTF-8
    bytes (ids 0-255; DNA is ASCII), each id out as the character of that code point, ids below
    32 as a space; id 0 ends a sequence."""

    name = "evo-chars"
    vocab_size = 512
    eos_token_id = 0
    eos_token = "\x00"  # (its text out is a space, as every id below 32)
    allowed_token_ids = None

    def encode(self, text: str) -> list[int]:
        """ValueError for text that is not valid Unicode (lone surrogates)."""
        return ByteTokenizer().encode(text)

    def stream_decoder(self) -> _CharStreamDecoder:
        return _CharStreamDecoder()

    def token_string(self, token: int) -> str:
        return _CharStreamDecoder().push(token)


class _DnaStreamDecoder:
    def push(self, token: int) -> str:
        return dna.decode([token])

    def flush(self) -> str:
        return ""


class DnaTokenizer:
    """HyenaDNA's characters: ``[CLS]`` + nucleotides (strict: see :func:`dna.encode`)."""

    name = "dna"
    vocab_size = len(dna.SPECIAL_TOKENS) + len(dna.NUCLEOTIDE_IDS)
    eos_token_id = dna.SEP
    eos_token = "[SEP]"
    allowed_token_ids = dna.NUCLEOTIDE_IDS

    def encode(self, text: str) -> list[int]:
        return dna.encode(text).tolist()

    def stream_decoder(self) -> _DnaStreamDecoder:
        return _DnaStreamDecoder()

    def token_string(self, token: int) -> str:
        return dna.decode([token])


def load_with_tokenizer(
    directory: str | None = None, *, trust_pickle: bool = False
) -> tuple[torch.nn.Module, Tokenizer | None, str]:
    """The model in ``directory`` (default: the bundled one), its tokenizer (None where it is
    not bundled) and its format; CheckpointError for a checkpoint that cannot be loaded,
    ValueError for a vocabulary too small for its tokenizer."""
    format = "futurefill" if directory is None else detect_format(directory)
    model = load_pretrained(directory, trust_pickle=trust_pickle)
    tokenizer = tokenizer_for(format)
    vocab = model.config.vocab_size
    if tokenizer is not None and vocab < tokenizer.vocab_size:
        raise ValueError(
            f"its vocabulary has {vocab} tokens, fewer than the {tokenizer.name} tokenizer's "
            f"{tokenizer.vocab_size}"
        )
    return model, tokenizer, format


def tokenizer_for(format: str) -> Tokenizer | None:
    """The tokenizer of a :data:`futurefill.pretrained.FORMATS` entry (None: not bundled)."""
    if format == "futurefill":
        return ByteTokenizer()
    if format in ("hyenadna-hf", "hyenadna", "futurefill-hyenalm"):
        return DnaTokenizer()
    if format in ("evo2", "evo1"):
        return CharTokenizer()
    return None
