"""The server's prefix cache: the decoding state of a row right after recent prompts, so that a
request whose prompt equals one of them starts from a copy instead of prefilling it again.

An entry is a :class:`~futurefill.nn.RowSnapshot` (what the row holds after its prompt: O(P)
for Continuous-FutureFill's inputs and known outputs and for attention caches, O(state) for
``modal``) and the logits of the prompt's last position (what its first token is chosen from).
Entries are kept least-recently-used first and bounded in bytes: a new entry evicts the oldest
until it fits, and one larger than the whole cache is not kept. Restoring copies the snapshot:
the rows that start from an entry never change it.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from futurefill.nn import RowSnapshot

__all__ = ["CachedPrompt", "PrefixCache"]

#: Bytes of decoding state the server keeps for recent prompts by default.
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class CachedPrompt:
    """A prompt's state after its prefill and its last position's logits ``(vocab,)``."""

    snapshot: RowSnapshot
    logits: torch.Tensor

    @property
    def nbytes(self) -> int:
        return self.snapshot.nbytes + self.logits.numel() * self.logits.element_size()


class PrefixCache:
    """Post-prefill states by prompt, least recently used evicted first, at most ``capacity``
    bytes (0: nothing kept). ``metrics`` (optional) gets ``observe_prefix_cache(hit)`` at each
    lookup and its ``prefix_cache_bytes`` gauge set."""

    def __init__(self, capacity: int, metrics=None):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"prefix cache capacity must be an int >= 0 bytes, got {capacity!r}")
        self.capacity, self.metrics = capacity, metrics
        self._entries: collections.OrderedDict[bytes, CachedPrompt] = collections.OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, prompt: Sequence[int]) -> CachedPrompt | None:
        """The entry of ``prompt`` (now the most recently used), or None."""
        if not self.capacity:
            return None
        key = _key(prompt)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        if self.metrics is not None:
            self.metrics.observe_prefix_cache(hit=entry is not None)
        return entry

    def put(self, prompt: Sequence[int], entry: CachedPrompt) -> bool:
        """Keep ``entry`` for ``prompt``, evicting the least recently used ones until it fits;
        False (nothing kept, nothing evicted) when it is larger than the cache."""
        size = entry.nbytes
        if size > self.capacity:
            return False
        key = _key(prompt)
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        while self.nbytes + size > self.capacity:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes
        self._entries[key] = entry
        self.nbytes += size
        if self.metrics is not None:
            self.metrics.prefix_cache_bytes.set(self.nbytes)
        return True

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


def _key(prompt: Sequence[int]) -> bytes:
    """A prompt's key: a 128-bit digest of its ids (a 32k-token prompt is not kept twice)."""
    data = torch.tensor(list(prompt), dtype=torch.int64).numpy().tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()
