"""Causal attention with a key/value cache, as a decoding module (the hybrids' attention blocks).

``attn(q, k, v)`` with ``q`` ``(batch, length, heads, head_dim)`` and ``k``, ``v``
``(batch, length, kv_heads, head_dim)`` (grouped-query attention when ``kv_heads < heads``, each
key/value head serving ``heads / kv_heads`` query heads) returns ``(batch, length, heads,
head_dim)``. Query i attends to keys j <= i (and, with ``window``, i - j <= window)::

    scores = scale * q_i . k_j              (scale default 1 / sqrt(head_dim))
    scores = softcap * tanh(scores / softcap)                  with softcap
    scores = scores - slope_h * (i - j)                        with ALiBi slopes
    out_i = softmax_j(scores) . v_j

Outside a session: one ``scaled_dot_product_attention`` call where the options allow (no window,
ALiBi or softcap), else the exact masked formulation above. In a session: the keys and values go
into a preallocated cache of ``min(max_len, window + 1)`` slots (a ring with a window: O(window)
memory whatever the length), each slot remembering the position it holds; a chunk attends to the
cached positions and to its own. Every row is at its own position (the session's); a compiled
step is one fixed-shape function of the cache, the slots' positions and each row's position
(tensors).

:func:`rotary` applies rotary position embeddings at the positions
:func:`futurefill.nn.positions` gives (outside a session and in one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from futurefill.nn.session import DecodingSession
from futurefill.nn.state import DecodingModule, ModuleState
from futurefill.online.base import tensor_bytes

__all__ = ["AttentionState", "CausalAttention", "rotary"]

QUERY_BLOCK = 512  # queries per block of the masked formulation, at most
# Bytes the temporaries of one block of the masked formulation may take (scores, weights, the
# mask): a block of queries is smaller where there are many keys, so a long prompt's memory
# stays bounded (about 12 bytes per head and 10 more per query-key pair).
BLOCK_BYTES = 2**28


def rotary(
    x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0, scale: float = 1.0
) -> torch.Tensor:
    """Rotary position embeddings (the rotate-half convention of GPT-NeoX and LLaMA, over the
    whole last dimension): ``x`` ``(batch, length, heads, head_dim)`` rotated by the absolute
    ``positions`` ``(batch, length)``; the same shape. Channel pair (c, c + head_dim / 2) turns
    by ``position / scale * base ** (-2c / head_dim)`` (``scale`` > 1: linearly interpolated
    positions, for contexts longer than the training one). Angles in float64."""
    half = x.shape[-1] // 2
    if x.shape[-1] % 2:
        raise ValueError(f"rotary needs an even head_dim, got {x.shape[-1]}")
    exponent = torch.arange(half, dtype=torch.float64, device=x.device) * (-2.0 / x.shape[-1])
    freqs = torch.pow(torch.tensor(base, dtype=torch.float64, device=x.device), exponent)
    positions = positions.to(torch.float64)[..., None] / scale
    angle = (positions * freqs).to(x.dtype)  # (batch, length, half)
    cos, sin = angle.cos()[:, :, None], angle.sin()[:, :, None]
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


class AttentionState(ModuleState):
    """The key/value cache of a :class:`CausalAttention` in a session: ``keys``, ``values``
    ``(batch, kv_heads, slots, head_dim)`` and ``slot_positions`` ``(batch, slots)`` (the
    position each slot holds, -1 for none), allocated at the first chunk; each row's next
    position is the session's."""

    def __init__(self, session: DecodingSession, name: str, module: CausalAttention):
        super().__init__(session, name)
        self.module = module
        self.slots = (
            session.max_len if module.window is None else min(session.max_len, module.window + 1)
        )
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.slot_positions: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return tensor_bytes([self.keys, self.values, self.slot_positions])

    def reset_rows(self, rows: Sequence[int]) -> None:
        if self.keys is not None:
            self.slot_positions[list(rows)] = -1

    def save_row(self, row: int) -> list[torch.Tensor]:
        """The row's filled slots: its first ``position`` (all of a window's ring)."""
        if self.keys is None:
            return []
        position = int(self.session.positions[row])
        filled = self.slots if self.module.window is not None else min(position, self.slots)
        cache = (self.keys, self.values, self.slot_positions[:, None])
        return [t[row, :, :filled].clone() for t in cache]

    def load_rows(self, rows: Sequence[int], saved: list[torch.Tensor]) -> None:
        if not saved:
            return
        keys, values, held = saved
        filled, index = keys.shape[1], list(rows)
        self.keys[index, :, :filled] = keys
        self.values[index, :, :filled] = values
        self.slot_positions[index, :filled] = held[0]

    def prepare_traced(self) -> None:
        if self.keys is None:
            raise ValueError(f"{self.name!r}: compiled steps need a first chunk")

    def traced_tensors(self) -> list[torch.Tensor]:
        return [self.keys, self.values, self.slot_positions]

    def feed(self, rows: Sequence[int], q, k, v) -> torch.Tensor:
        """The outputs of the next ``n`` queries ``q`` ``(len(rows), n, heads, dim)`` of
        ``rows``; their keys and values join the cache."""
        session, module = self.session, self.module
        n = q.shape[1]
        if not session.chunk.traced:
            self.check_dtype(q, module)
            session.touch()
        if self.keys is None:  # ordinary tensors (resets may come outside inference mode)
            shape = (session.batch_size, k.shape[2], self.slots, k.shape[3])
            with torch.inference_mode(False):
                self.keys = torch.zeros(shape, dtype=k.dtype, device=k.device)
                self.values = torch.zeros(shape, dtype=v.dtype, device=v.device)
                self.slot_positions = torch.full(
                    (session.batch_size, self.slots), -1, dtype=torch.long, device=k.device
                )
        every = tuple(rows) == session.all_rows
        index = None if every else list(rows)
        start = session.device_positions(rows)  # (batch,)
        q_pos = start[:, None] + torch.arange(n, device=q.device)  # (batch, n)
        chunk_k, chunk_v = k.transpose(1, 2), v.transpose(1, 2)  # (batch, kv_heads, n, dim)
        last = min(n, self.slots)  # the chunk's keys the cache keeps: distinct slots
        if n > 1:  # a chunk: the cache and the chunk itself, then its last keys cached
            cached_k, cached_v, held = self._cached(index)
            # Without a window, slot s holds position s: the slots below the furthest row's
            # position are all that can be filled (a prompt's chunks see a growing prefix).
            filled = self.slots
            if module.window is None:
                filled = min(self.slots, max(session.row_positions(rows)))
                cached_k, cached_v = cached_k[:, :, :filled], cached_v[:, :, :filled]
                held = held[:, :filled]
            if module.plain and filled == 0:  # nothing cached, no option:
                out = module.sdpa(q, chunk_k, chunk_v)  # the forward's own SDPA call
            else:
                keys = torch.cat([cached_k, chunk_k], dim=2)
                values = torch.cat([cached_v, chunk_v], dim=2)
                k_pos = torch.cat([held, q_pos], dim=1)
                out = module.attend_chunk(q, keys, values, k_pos, cached=filled)
        tail = slice(n - last, n)
        self._write(index, q_pos[:, tail], chunk_k[:, :, tail], chunk_v[:, :, tail])
        if n == 1:  # a step: into the cache first, then attend to the cache alone
            keys, values, held = self._cached(index)
            out = module.masked_attention(q, keys, values, q_pos, held)
        return out

    def _cached(self, index: list[int] | None) -> tuple[torch.Tensor, ...]:
        """The cache of the rows ``index`` (None: every row, the buffers themselves)."""
        if index is None:
            return self.keys, self.values, self.slot_positions
        return self.keys[index], self.values[index], self.slot_positions[index]

    def _write(
        self, index: list[int] | None, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> None:
        """Keys and values ``(rows, kv_heads, m, dim)`` at ``positions`` ``(rows, m)`` into
        their slots, in place (a step writes one slot per row, never the whole cache)."""
        slot = positions % self.slots
        if index is None:
            where = slot[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            self.keys.scatter_(2, where, k)
            self.values.scatter_(2, where, v)
            self.slot_positions.scatter_(1, slot, positions)
        else:
            rows = torch.tensor(index, device=slot.device)[:, None]  # (rows, 1)
            self.keys[rows, :, slot] = k.transpose(1, 2)  # (rows, m, kv_heads, dim)
            self.values[rows, :, slot] = v.transpose(1, 2)
            self.slot_positions[rows, slot] = positions


class CausalAttention(DecodingModule):
    """The attention core of a hybrid block, decoding through a key/value cache in a session;
    see the module docstring.

    Parameters
    ----------
    window : int, optional
        Sliding window: each position attends to itself and the ``window`` before it.
    alibi : Tensor, shape (heads,), optional
        ALiBi slopes (a buffer: it follows ``.to()``).
    softcap : float, optional
        Scores become ``softcap * tanh(scores / softcap)``.
    scale : float, optional
        Default ``1 / sqrt(head_dim)``.
    """

    def __init__(
        self,
        *,
        window: int | None = None,
        alibi: torch.Tensor | None = None,
        softcap: float | None = None,
        scale: float | None = None,
    ):
        super().__init__(max_len=None)
        if window is not None and (not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if softcap is not None and not softcap > 0:
            raise ValueError(f"softcap must be > 0, got {softcap!r}")
        self.window, self.softcap, self.scale = window, softcap, scale
        self.register_buffer("alibi", None if alibi is None else torch.as_tensor(alibi))

    def open_state(self, session: DecodingSession, name: str) -> AttentionState:
        return AttentionState(session, name, self)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(batch, length, heads, dim)``, ``(batch, length, kv_heads, dim)`` x 2 -> like q."""
        if (
            q.dim() != 4
            or k.shape != v.shape
            or k.shape[:2] != q.shape[:2]
            or (k.shape[3] != q.shape[3] or q.shape[2] % k.shape[2])
        ):
            raise ValueError(
                "q must be (batch, length, heads, dim) and k, v (batch, length, kv_heads, dim) "
                f"with kv_heads dividing heads; got {tuple(q.shape)}, {tuple(k.shape)}, "
                f"{tuple(v.shape)}"
            )
        if self._state is not None:
            return self._state.run(self._state.feed, q, k, v)
        if self.plain:
            return self.sdpa(q, k.transpose(1, 2), v.transpose(1, 2))
        pos = torch.arange(q.shape[1], device=q.device).expand(q.shape[0], -1)
        return self.attend_chunk(q, k.transpose(1, 2), v.transpose(1, 2), pos)

    @property
    def plain(self) -> bool:
        """No window, ALiBi or softcap: causal attention as ``scaled_dot_product_attention``
        computes it."""
        return self.window is None and self.alibi is None and self.softcap is None

    def sdpa(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        allowed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Plain attention of ``q`` ``(batch, n, heads, dim)`` over ``keys``, ``values``
        ``(batch, kv_heads, m, dim)`` by one SDPA call (its fused kernels): causal over its own
        keys (``m == n``), or where ``allowed`` ``(batch, 1, n, m)`` says."""
        group = q.shape[2] // keys.shape[1]
        if group > 1:  # (batch, heads, m, dim)
            keys = keys.repeat_interleave(group, dim=1)
            values = values.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            keys,
            values,
            attn_mask=allowed,
            is_causal=allowed is None,
            scale=self.scale,
        )
        return out.transpose(1, 2)

    def attend_chunk(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        k_pos: torch.Tensor,
        cached: int = 0,
    ) -> torch.Tensor:
        """:meth:`masked_attention` for a chunk of queries whose own keys are the last ``n`` of
        ``keys`` (after ``cached`` earlier ones), a block of queries at a time against the keys
        it may see (a slice of ``keys`` without a window: no copy), the block the smaller the
        more keys: memory bounded by :data:`BLOCK_BYTES` whatever the prompt."""
        n, heads = q.shape[1], q.shape[2]
        q_pos = k_pos[:, cached:]
        per_query = (cached + n) * (12 * heads + 10)
        block = max(1, min(QUERY_BLOCK, BLOCK_BYTES // max(per_query, 1)))
        parts = []
        for start in range(0, n, block):
            stop = min(start + block, n)
            if self.window is None:
                seen = slice(0, cached + stop)
                visible_k, visible_v, visible_pos = (
                    keys[:, :, seen],
                    values[:, :, seen],
                    k_pos[:, seen],
                )
            else:
                first = max(0, start - self.window)
                visible = torch.cat(
                    [torch.arange(cached), torch.arange(cached + first, cached + stop)]
                ).to(keys.device)
                visible_k = keys.index_select(2, visible)
                visible_v = values.index_select(2, visible)
                visible_pos = k_pos.index_select(1, visible)
            parts.append(
                self.masked_attention(
                    q[:, start:stop], visible_k, visible_v, q_pos[:, start:stop], visible_pos
                )
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def masked_attention(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
    ) -> torch.Tensor:
        """The masked formulation: ``q`` ``(batch, n, heads, dim)`` against ``keys``, ``values``
        ``(batch, kv_heads, m, dim)`` held at positions ``k_pos`` ``(batch, m)`` (-1: none), the
        queries at ``q_pos`` ``(batch, n)``; ``(batch, n, heads, dim)``. Plain attention (no
        window, ALiBi or softcap) is one ``scaled_dot_product_attention`` call with the mask
        (its fused kernels; every query sees at least its own key there)."""
        if self.plain:
            held = k_pos[:, None, None, :]  # (batch, 1, 1, m)
            return self.sdpa(q, keys, values, (held >= 0) & (held <= q_pos[:, None, :, None]))
        heads, group = q.shape[2], q.shape[2] // keys.shape[1]
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        if group > 1:  # (batch, heads, m, dim)
            keys = keys.repeat_interleave(group, dim=1)
            values = values.repeat_interleave(group, dim=1)
        scores = torch.einsum("bnhd,bhmd->bhnm", q, keys) * scale
        if self.softcap is not None:
            scores = self.softcap * torch.tanh(scores / self.softcap)
        distance = q_pos[:, None, :, None] - k_pos[:, None, None, :]  # (batch, 1, n, m)
        if self.alibi is not None:
            scores = scores - self.alibi.to(scores.dtype).view(1, heads, 1, 1) * distance
        allowed = (k_pos[:, None, None, :] >= 0) & (distance >= 0)
        if self.window is not None:
            allowed = allowed & (distance <= self.window)
        scores = scores.masked_fill(~allowed, -torch.inf)
        weights = torch.softmax(scores, dim=-1)
        # A query with nothing to attend to gets zeros, not NaN.
        weights = torch.where(allowed.any(dim=-1, keepdim=True), weights, 0.0)
        return torch.einsum("bhnm,bhmd->bnhd", weights, values)

    def extra_repr(self) -> str:
        options = {"window": self.window, "softcap": self.softcap, "scale": self.scale}
        shown = [f"{k}={v}" for k, v in options.items() if v is not None]
        return ", ".join([*shown, *(["alibi"] if self.alibi is not None else [])])
