"""Filters in modal form, decoded by their own recurrence: O(S) work and memory per channel.

A filter in modal form is a sum of ``S`` decaying (or oscillating) exponentials per channel,

    h[c, t] = Re sum_k residues[c, k] * exp(log_poles[c, k] * t)          (t >= 0)

with real poles (Evo 2's Hyena-LI layers: ``log_poles`` real) or complex ones (Evo 1, S4D-style
layers: complex ``log_poles`` and ``residues``). Its convolution is a diagonal linear
recurrence: with ``p = exp(log_poles)``,

    s_t = p * s_{t-1} + u_t,     y_t = Re sum_k residues_k * s_t[k]      (s_{-1} = 0)

so a step costs O(S) per channel whatever the position, and the state is ``(channels, S)``
whatever the length: what a long prompt leaves behind is S numbers per channel.

A chunk of ``n`` inputs (a prompt, a piece of one) runs in blocks of ``block_len``: within a
block the outputs are the FFT convolution with the block's first taps plus the state's
contribution ``Re sum_k residues_k p_k^(t+1) s[k]``, and the state moves on by
``p^b s + sum_j p^(b-1-j) u_j``. Memory is bounded by the block (``channels x S x block_len``),
never ``channels x S x L``: no long prompt materialises the filter at its own length.

The same filter decodes with every other method through its taps (:meth:`ModalFilter.taps`,
materialised block by block at the session's ``max_len``), so the recurrence and FutureFill can
be compared on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from futurefill.checks import check_int
from futurefill.fftconv import causal_conv, compute_dtype
from futurefill.online.base import OnlineConvEngine, check_traced_dtype, tensor_bytes
from futurefill.online.rows import RowsEngine

__all__ = ["ModalConv", "ModalFilter", "ModalRows"]

TAPS_BLOCK = 1024  # positions per block when a filter's taps are materialised
DEFAULT_BLOCK_LEN = 128  # positions per block of a chunk through the recurrence


Complex = tuple[torch.Tensor, "torch.Tensor | None"]  # (real, imaginary), None: real


@dataclass(frozen=True)
class ModalFilter:
    """A filter in modal form, ``h[c, t] = Re sum_k residues[c, k] exp(log_poles[c, k] t)``.

    Parameters
    ----------
    log_poles : Tensor, shape (channels, state)
        Real (real poles ``exp(log_poles)``) or complex; ``Re log_poles < 0`` for a decaying
        filter.
    residues : Tensor, shape (channels, state)
        Real or complex (a real residue with complex poles is taken as complex).
    """

    log_poles: torch.Tensor
    residues: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("log_poles", "residues"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dim() != 2:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else value
                raise ValueError(f"{name} must be a tensor (channels, state), got {shape!r}")
        if self.log_poles.shape != self.residues.shape:
            raise ValueError(
                f"log_poles {tuple(self.log_poles.shape)} and residues "
                f"{tuple(self.residues.shape)} must have one shape (channels, state)"
            )

    @property
    def channels(self) -> int:
        return self.log_poles.shape[0]

    @property
    def state(self) -> int:
        return self.log_poles.shape[1]

    @property
    def is_complex(self) -> bool:
        return self.log_poles.is_complex() or self.residues.is_complex()

    @property
    def dtype(self) -> torch.dtype:
        """The real dtype of the filter (of its taps)."""
        return self.log_poles.real.dtype

    @property
    def device(self) -> torch.device:
        return self.log_poles.device

    def parts(self, dtype: torch.dtype) -> tuple[Complex, Complex]:
        """``(log_poles, residues)``, each as (real, imaginary) tensors ``(channels, state)``
        in ``dtype``, the imaginary part None for a real filter: what the engines compute with
        (no complex tensors: compiled steps and every backend handle real ones)."""

        def split(x: torch.Tensor) -> Complex:
            x = x.detach()
            if x.is_complex():
                pair = torch.view_as_real(x.resolve_conj()).to(dtype)
                return pair[..., 0].contiguous(), pair[..., 1].contiguous()
            real = x.to(dtype)
            return real, (torch.zeros_like(real) if self.is_complex else None)

        return split(self.log_poles), split(self.residues)

    def powers(self, start: int, stop: int, dtype: torch.dtype) -> Complex:
        """``p^t`` for ``start <= t < stop`` as (real, imaginary) tensors ``(channels, state,
        stop - start)`` (imaginary None for real poles), computed as ``exp(t log p)`` in
        ``dtype``."""
        (log_p, log_p_im), _ = self.parts(dtype)
        t = torch.arange(start, stop, dtype=dtype, device=self.device)
        magnitude = torch.exp(log_p[..., None] * t)  # (channels, state, n)
        if log_p_im is None:
            return magnitude, None
        angle = log_p_im[..., None] * t
        return magnitude * torch.cos(angle), magnitude * torch.sin(angle)

    @torch.no_grad()
    def taps(self, length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The first ``length`` taps ``(channels, length)`` in ``dtype`` (default the filter's),
        computed in blocks of :data:`TAPS_BLOCK` positions: ``channels x state x TAPS_BLOCK``
        at a time, never ``channels x state x length``."""
        dtype = self.dtype if dtype is None else dtype
        work = compute_dtype(dtype)
        _, residues = self.parts(work)
        out = torch.empty(self.channels, length, dtype=dtype, device=self.device)
        for start in range(0, length, TAPS_BLOCK):
            stop = min(start + TAPS_BLOCK, length)
            out[:, start:stop] = real_dot(residues, self.powers(start, stop, work)).to(dtype)
        return out


class ModalRows(RowsEngine):
    """The recurrence for ``batch_size`` rows: one state ``(batch_size, channels, state)``
    (and its imaginary part for complex poles), in float32 for half precisions. Positions do
    not enter: a row's state is everything its past leaves. See the module docstring.

    Parameters
    ----------
    h : ModalFilter
    max_len : int
        The longest sequence of a row (the session's; the recurrence itself has no limit).
    batch_size : int
    block_len : int, optional
        Positions per block of a chunk (default :data:`DEFAULT_BLOCK_LEN`): memory
        ``channels x state x block_len`` per block, whatever the chunk.
    """

    schedules_in_graph = True  # (nothing scheduled)

    def __init__(
        self,
        h: ModalFilter,
        *,
        max_len: int,
        batch_size: int = 1,
        block_len: int | None = None,
    ):
        if not isinstance(h, ModalFilter):
            raise TypeError(
                "method 'modal' decodes filters given in modal form (a ModalFilter of poles "
                f"and residues), got {type(h).__name__}"
            )
        self.max_len = check_int(max_len, "max_len")
        self.batch_size = check_int(batch_size, "batch_size")
        self.block_len = min(check_int(block_len or DEFAULT_BLOCK_LEN, "block_len"), self.max_len)
        self.channels, self.device = h.channels, h.device
        self.dtype = h.dtype
        self.compute_dtype = work = compute_dtype(h.dtype)
        self.filter = ModalFilter(h.log_poles.clone(), h.residues.clone())  # a snapshot
        self.is_complex = h.is_complex
        _, self.residues = h.parts(work)  # (C, S) each
        self.poles = tuple(
            None if x is None else x[:, :, 0].contiguous() for x in h.powers(1, 2, work)
        )
        shape = (self.batch_size, self.channels, h.state)
        self.state = torch.zeros(shape, dtype=work, device=self.device)  # real part
        self.state_im = torch.zeros_like(self.state) if self.is_complex else None

    @property
    def nbytes(self) -> int:
        return tensor_bytes([self.state, self.state_im, *self.poles, *self.residues])

    def extend(self, u: torch.Tensor, rows: Sequence[int], start: int) -> torch.Tensor:
        """``u`` ``(R, channels, n)`` after each row's state, block by block: the powers of the
        poles over a block computed once per call (``channels x state x block_len``), each
        block's contractions over the state one batched product per channel."""
        index = list(rows)
        x = u.to(self.compute_dtype)
        n = x.shape[-1]
        b = min(self.block_len, n)
        powers = self.filter.powers(0, b + 1, self.compute_dtype)  # (C, S, b + 1)
        taps = real_dot(self.residues, powers, 0, b)  # h[:, :b]: (C, b)
        by_channel = x.permute(1, 0, 2)  # (C, R, n)
        state = tuple(  # (C, R, S)
            None if part is None else part[index].transpose(0, 1)
            for part in (self.state, self.state_im)
        )
        parts, reversed_by_length = [], {}
        for lo in range(0, n, b):
            hi = min(lo + b, n)
            within = causal_conv(x[..., lo:hi], taps[:, : hi - lo])  # the block's own inputs
            if hi - lo not in reversed_by_length:  # p^(m-1-j): once per block length
                reversed_by_length[hi - lo] = tuple(
                    None if part is None else reversed_powers(part, hi - lo) for part in powers
                )
            carried, state = self._block(
                by_channel[:, :, lo:hi], state, powers, reversed_by_length[hi - lo]
            )
            parts.append(within + carried.transpose(0, 1))
        self.state[index] = state[0].transpose(0, 1)
        if self.is_complex:
            self.state_im[index] = state[1].transpose(0, 1)
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return y.to(u.dtype)  # the activations' dtype (a half model keeps float32 poles)

    def _block(self, u: torch.Tensor, state: Complex, powers: Complex, reversed: Complex) -> tuple:
        """One block ``u`` ``(C, R, m)`` after ``state`` ``(C, R, S)``, with ``powers`` ``p^t``
        and ``reversed`` ``p^(m-1-j)`` (:func:`reversed_powers`): what the state adds to its
        outputs, ``Re sum_k r_k s_k p_k^(t+1)`` ``(C, R, m)``, and the state after it,
        ``p^m s + sum_j p^(m-1-j) u_j``."""
        m = u.shape[-1]
        (r, r_im), (s, s_im) = self.residues, state
        rs = (
            (r[:, None] * s, None)
            if s_im is None
            else complex_mul((r[:, None], r_im[:, None]), state)
        )
        carried = real_dot(rs, powers, 1, m + 1)
        p_m = tuple(None if part is None else part[:, None, :, m] for part in powers)
        decayed = (p_m[0] * s, None) if s_im is None else complex_mul(p_m, state)
        u = u.contiguous()  # (a batched product of strided operands copies per channel)
        pushed = tuple(  # sum_j u_j p^(m-1-j): (C, R, m) @ (C, m, S)
            None if part is None else torch.bmm(u, part) for part in reversed
        )
        state = tuple(None if d is None else d + q for d, q in zip(decayed, pushed, strict=True))
        return carried, state

    def step(
        self, u: torch.Tensor, rows: Sequence[int], positions: Sequence[int]
    ) -> tuple[torch.Tensor, list]:
        if len(rows) == self.batch_size and list(rows) == list(range(self.batch_size)):
            return self.step_traced(u), []
        index = list(rows)
        state_im = None if self.state_im is None else self.state_im[index]
        y, (state, state_im) = self._recur(u, (self.state[index], state_im))
        self.state[index] = state
        if state_im is not None:
            self.state_im[index] = state_im
        return y, []

    def _recur(self, u: torch.Tensor, state: Complex) -> tuple[torch.Tensor, Complex]:
        """``s = p s + u``, ``y = Re sum r s`` for ``u`` ``(R, C)``: the output and new state."""
        dtype, u = u.dtype, u.to(self.compute_dtype)[..., None]
        (p, p_im), (r, r_im), (s, s_im) = self.poles, self.residues, state
        if s_im is None:
            s = torch.addcmul(u, p, s)
            return (r * s).sum(-1).to(dtype), (s, None)
        s, s_im = p * s - p_im * s_im + u, p * s_im + p_im * s
        return (r * s - r_im * s_im).sum(-1).to(dtype), (s, s_im)

    def reset_rows(self, rows: Sequence[int], positions: Sequence[int]) -> None:
        self.state[list(rows)] = 0
        if self.state_im is not None:
            self.state_im[list(rows)] = 0

    def save_rows(self, rows: Sequence[int], position: int) -> list[torch.Tensor]:
        """The rows' states (all a row needs, whatever its position)."""
        with torch.inference_mode(False):
            return [t[list(rows)] for t in (self.state, self.state_im) if t is not None]

    def load_rows(self, rows: Sequence[int], position: int, saved: list[torch.Tensor]) -> None:
        for tensor, state in zip((self.state, self.state_im), saved, strict=False):
            tensor[list(rows)] = state

    def prepare_traced(self, positions: Sequence[int]) -> None:
        check_traced_dtype(self.dtype, self.compute_dtype)

    def step_traced(self, u: torch.Tensor) -> torch.Tensor:
        """Every row one step, in place: ``(batch_size, channels)``."""
        y, (state, state_im) = self._recur(u, (self.state, self.state_im))
        self.state.copy_(state)
        if state_im is not None:
            self.state_im.copy_(state_im)
        return y

    def advance(self, rows: Sequence[int], positions: Sequence[int]) -> list:
        return []

    def traced_tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.state, self.state_im) if t is not None]

    def __repr__(self) -> str:
        kind = "complex" if self.is_complex else "real"
        return (
            f"ModalRows(channels={self.channels}, state={self.state.shape[2]} {kind}, "
            f"batch_size={self.batch_size}, block_len={self.block_len}, dtype={self.dtype})"
        )


def real_dot(a: Complex, powers: Complex, lo: int = 0, hi: int | None = None) -> torch.Tensor:
    """``Re sum_k a_k p_k^t`` over ``t`` in ``[lo, hi)`` of ``powers`` ``(C, S, n)``: ``a``
    ``(C, [R,] S)`` -> ``(C, [R,] hi - lo)``, one batched product per channel (contiguous
    operands: strided ones are copied per channel)."""
    window = slice(lo, hi)
    squeeze = a[0].dim() == 2
    parts = [None if x is None else (x[:, None] if squeeze else x).contiguous() for x in a]
    y = torch.bmm(parts[0], powers[0][:, :, window].contiguous())
    if parts[1] is not None:
        y = y - torch.bmm(parts[1], powers[1][:, :, window].contiguous())
    return y[:, 0] if squeeze else y


def reversed_powers(powers: torch.Tensor, m: int) -> torch.Tensor:
    """``p^(m-1-j)`` for ``j < m``, ``(C, m, S)`` contiguous, from ``p^t`` ``(C, S, >= m)``."""
    return powers[:, :, :m].flip(-1).transpose(1, 2).contiguous()


def complex_mul(a: Complex, b: Complex) -> Complex:
    """``a * b`` for complex numbers as (real, imaginary) tensors."""
    return a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]


class ModalConv(OnlineConvEngine):
    """The recurrence of a filter in modal form for ``batch_size`` sequences in lockstep (the
    registry's engine of method ``"modal"``; its rows form is :class:`ModalRows`). ``h`` is a
    :class:`ModalFilter`, not taps; ``max_len`` is required (a modal filter has no length)."""

    method = "modal"
    filter_form = "modal"
    options: ClassVar[dict] = {"block_len": lambda v: check_int(v, "block_len")}
    summary = (
        "O(L S) time, O(S) memory per channel: the filter's own recurrence (filters in modal "
        "form: S poles)"
    )
    rows_engine = ModalRows

    def __init__(
        self,
        h: ModalFilter,
        *,
        max_len: int | None = None,
        batch_size: int = 1,
        block_len: int | None = None,
    ):
        if max_len is None:
            raise ValueError("method 'modal' needs max_len (a filter in modal form has no length)")
        self.rows = ModalRows(h, max_len=max_len, batch_size=batch_size, block_len=block_len)
        self.dtype, self.compute_dtype = self.rows.dtype, self.rows.compute_dtype
        self.channels, self.max_len = self.rows.channels, self.rows.max_len
        self.batch_size, self.device = self.rows.batch_size, self.rows.device
        self._step_shape = (self.batch_size, self.channels)
        self._position = 0
        self._prefilled = False
        self._index = torch.zeros(1, dtype=torch.long, device=self.device)
        self._all = list(range(self.batch_size))

    def _prefill(self, u: torch.Tensor) -> torch.Tensor:
        return self.rows.extend(u, self._all, 0)

    def _extend(self, u: torch.Tensor) -> torch.Tensor:
        return self.rows.extend(u, self._all, self._position)

    def _step(self, u_t: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        y = self.rows.step_traced(u_t)
        return y if out is None else out.copy_(y)

    def step_traced(self, u_t: torch.Tensor) -> torch.Tensor:
        return self.rows.step_traced(u_t)

    def _reset(self) -> None:
        self.rows.reset_rows(self._all, self._all)

    def _buffers(self) -> list[torch.Tensor]:
        rows = self.rows
        return [
            t for t in (rows.state, rows.state_im, *rows.poles, *rows.residues) if t is not None
        ]

    def _scheduled_work(self) -> None:
        return None

    def _traced_index(self) -> int:
        return 0
