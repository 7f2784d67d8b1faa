"""The demo corpus: Python's documentation topics, as bytes, split and batched for training.

The corpus is ``pydoc_data.topics.topics`` (shipped with every CPython), a dict of topic name to
text. It is tokenised at the byte level (vocabulary 256: each UTF-8 byte is a token), so no
tokenizer has to be shipped with the demo model.

Layout, all deterministic::

    corpus = "\\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    train  = corpus[: n - n_val]        n_val = round(val_fraction * n)   (default 5%)
    val    = corpus[n - n_val :]         the tail: the last topics in alphabetical order

The text of the topics changes between Python releases; :func:`corpus_sha256` identifies the
version a model was trained on.
"""

from __future__ import annotations

import codecs
import hashlib
import math
from dataclasses import dataclass

import torch

__all__ = [
    "VOCAB_SIZE",
    "ByteStreamDecoder",
    "Split",
    "corpus_sha256",
    "decode",
    "encode",
    "load_corpus",
    "nats_to_bits",
    "sample_batch",
    "split_corpus",
    "unigram_bits",
    "windows",
]

VOCAB_SIZE = 256  # one token per byte value
DEFAULT_VAL_FRACTION = 0.05


def load_corpus() -> bytes:
    """The documentation topics joined in sorted key order, as UTF-8 bytes (~466 kB)."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def corpus_sha256(data: bytes | None = None) -> str:
    """SHA-256 of the corpus bytes (identifies the Python release's version of the topics)."""
    return hashlib.sha256(load_corpus() if data is None else data).hexdigest()


def encode(text: str | bytes) -> torch.Tensor:
    """UTF-8 bytes of ``text`` as token ids: a 1-D int64 tensor with values in [0, 256)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def decode(ids: torch.Tensor | list[int]) -> str:
    """Token ids back to text; invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return bytes(values).decode("utf-8", errors="replace")


class ByteStreamDecoder:
    """Decodes bytes arriving one at a time, holding back an incomplete multi-byte character.

    ``push(byte)`` returns the text that is now complete (often ``""`` in the middle of a
    character); ``flush()`` returns what is left, with U+FFFD for a character that never finished.
    Invalid bytes become U+FFFD as soon as they are known to be invalid.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, byte: int) -> str:
        return self._decoder.decode(bytes((int(byte),)))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


@dataclass(frozen=True)
class Split:
    """Training and validation token ids (1-D int64 tensors) of one corpus."""

    train: torch.Tensor
    val: torch.Tensor


def split_corpus(data: bytes, val_fraction: float = DEFAULT_VAL_FRACTION) -> Split:
    """Hold out the last ``val_fraction`` of ``data`` for validation (see the module docstring)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    ids = encode(data)
    n_val = max(1, round(val_fraction * len(ids)))
    if n_val >= len(ids):
        raise ValueError(f"corpus of {len(ids)} bytes is too short to split")
    return Split(train=ids[: len(ids) - n_val], val=ids[len(ids) - n_val :])


def sample_batch(
    ids: torch.Tensor, batch_size: int, context: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random windows of ``ids``: inputs and next-byte targets, each (B, context).

    The start offsets are drawn from ``generator`` only, so a seeded generator gives the same
    batches on every run.
    """
    if len(ids) < context + 1:
        raise ValueError(f"need at least context + 1 = {context + 1} tokens, got {len(ids)}")
    starts = torch.randint(0, len(ids) - context, (batch_size,), generator=generator)
    offsets = torch.arange(context + 1)
    chunk = ids[starts[:, None] + offsets]  # (B, context + 1)
    return chunk[:, :-1], chunk[:, 1:]


def windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping evaluation windows covering ``ids``: inputs and targets, each (N, context).

    Window i predicts ``ids[i*context + 1 : (i+1)*context + 1]`` from the bytes before each
    position inside the window; the trailing ``len(ids) - 1 - N*context`` bytes are not used.
    """
    n = (len(ids) - 1) // context
    if n < 1:
        raise ValueError(f"need at least context + 1 = {context + 1} tokens, got {len(ids)}")
    x = ids[: n * context].view(n, context)
    y = ids[1 : n * context + 1].view(n, context)
    return x, y


def unigram_bits(train: torch.Tensor, val: torch.Tensor) -> dict[str, float]:
    """The unigram baselines, in bits per byte.

    ``cross_entropy``: ``val`` scored by byte frequencies of ``train`` (add-one smoothed over the
    256 byte values): what a model that ignores context achieves. ``val_entropy``: entropy of
    ``val``'s own byte frequencies, the best any unigram model could do on it.
    """
    counts = torch.bincount(train, minlength=VOCAB_SIZE).double() + 1.0
    log_p = torch.log2(counts / counts.sum())
    cross_entropy = -log_p[val].mean().item()
    val_counts = torch.bincount(val, minlength=VOCAB_SIZE).double()
    p = val_counts[val_counts > 0] / len(val)
    val_entropy = -(p * torch.log2(p)).sum().item()
    return {"cross_entropy": cross_entropy, "val_entropy": val_entropy}


def nats_to_bits(loss: float) -> float:
    """Cross-entropy in nats per byte to bits per byte."""
    return loss / math.log(2)
