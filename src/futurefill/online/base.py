"""The interface every online convolution engine implements, and its input checks.

An engine produces, one input at a time, exactly the outputs of the offline causal convolution
``causal_conv(u, h)``. Its life cycle::

    engine = SomeEngine(h, max_len=L, batch_size=B)
    y_prompt = engine.prefill(u_prompt)  # optional, once, first: (B, D, P) -> (B, D, P)
    y_t = engine.step(u_t)                   # (B, D) -> (B, D), up to max_len inputs in all
                                             # (or engine.step(u_t, out=y_t): no allocation)
    engine.reset()                           # back to an empty sequence

Buffers are allocated when the engine is built, at prefill (sized by what is left to generate) and
at reset. ``step`` allocates only the tensor it returns, and nothing with ``out=``; the FFT levels
of the FutureFill methods allocate their temporaries once per finished block, not per step. Every
check runs before any state changes, so an input rejected with an error leaves the engine as it
was.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable
from typing import ClassVar

import torch

from futurefill.checks import check_int
from futurefill.fftconv import compute_dtype


def check_filter(h: torch.Tensor, max_len: int | None, batch_size: int) -> tuple[int, int]:
    """An engine's filters ``h`` ``(channels, filter_len)`` checked, and its ``max_len``
    (default ``filter_len``, at most that) and ``batch_size`` as ints, or a clear error."""
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
    if h.dim() != 2:
        raise ValueError(f"h must have shape (channels, filter_len), got {tuple(h.shape)}")
    channels, filter_len = h.shape
    if channels < 1 or filter_len < 1:
        raise ValueError(f"h must be non-empty, got shape {tuple(h.shape)}")
    max_len = filter_len if max_len is None else check_int(max_len, "max_len")
    batch_size = check_int(batch_size, "batch_size")
    if max_len > filter_len:
        raise ValueError(
            f"max_len {max_len} exceeds filter_len {filter_len}: the filter must be at least "
            "as long as the longest sequence"
        )
    return max_len, batch_size


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the tensors given (None entries skipped): every state's ``nbytes``."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def block_futures(blocks: list[torch.Tensor], spectra: list[torch.Tensor], b: int) -> torch.Tensor:
    """The FutureFill level of size ``b`` for several finished blocks at once: each block
    ``(..., D, b)`` convolved with its filter's taps ``h[:, :2b]`` (``spectra``: their rfft at
    length 2b, ``(D, b + 1)``) by one batched FFT pair; returns every block's contribution to the
    ``b`` outputs after it, ``(E, ..., D, b)``. One block is a view, no stacking copy."""
    if len(blocks) == 1:
        x, spectrum = blocks[0][None], spectra[0][None]
    else:
        x, spectrum = torch.stack(blocks), torch.stack(spectra)
    spectrum = spectrum.view(len(blocks), *(1,) * (x.dim() - 3), *spectrum.shape[1:])
    return torch.fft.irfft(torch.fft.rfft(x, n=2 * b).mul_(spectrum), n=2 * b)[..., b:]


def check_traced_dtype(dtype: torch.dtype, compute: torch.dtype) -> None:
    """A ValueError unless an engine of inputs in ``dtype``, computing in ``compute``, has a
    traced step: half precisions step through their float32 compute dtype, which the traced
    step does not."""
    if compute != dtype:
        raise ValueError(
            f"no compiled step in {str(dtype).removeprefix('torch.')} (half precisions "
            "decode eagerly, through float32): use float32 or float64"
        )


class OnlineConvEngine(ABC):
    """Base class of the online causal convolution engines.

    Parameters
    ----------
    h : Tensor, shape (channels, filter_len)
        One causal filter per channel; ``h[:, 0]`` multiplies the current input. The engine
        computes on h's device, in h's dtype (float16 and bfloat16 are computed in float32).
    max_len : int, optional
        Largest total length (prompt + generated). Defaults to ``filter_len``; must not exceed it.
    batch_size : int
        Number of sequences decoded together.
    """

    #: The registry's name of the engine (:func:`futurefill.online.register`).
    method: ClassVar[str] = ""
    #: Its knobs: keyword argument of the constructor -> checker (value -> int, or an error).
    options: ClassVar[dict[str, Callable[[object], int]]] = {}
    #: One line for the method tables: time for L steps, memory, how.
    summary: ClassVar[str] = ""
    #: The method's rows form, one state for rows at their own positions (a
    #: :class:`~futurefill.online.rows.RowsEngine` subclass); None: one engine per row
    #: (:class:`~futurefill.online.rows.PerRowEngines`).
    rows_engine: ClassVar[type | None] = None
    #: Whether the constructor takes a ``worker`` (a background thread for its jobs, which the
    #: session that uses the engine owns).
    uses_worker: ClassVar[bool] = False
    #: What the constructor's ``h`` is: ``"taps"`` (a tensor ``(channels, filter_len)``, every
    #: filter has them) or ``"modal"`` (a :class:`~futurefill.online.modal.ModalFilter`, only
    #: the filters that declare poles and residues).
    filter_form: ClassVar[str] = "taps"
    #: The attributes that depend only on the filter and the knobs (its transforms, plans, the
    #: worker): an engine and its copies (:meth:`copy`) share them.
    shared_attributes: ClassVar[tuple[str, ...]] = ("h",)

    def __init__(self, h: torch.Tensor, *, max_len: int | None = None, batch_size: int = 1):
        max_len, batch_size = check_filter(h, max_len, batch_size)
        channels = h.shape[0]
        self.dtype = h.dtype
        self.compute_dtype = compute_dtype(h.dtype)
        self.h = h.detach().to(self.compute_dtype, copy=True)  # a snapshot, not a view of h
        self.channels = channels
        self.max_len = max_len
        self.batch_size = batch_size
        self.device = h.device
        self._step_shape = (self.batch_size, channels)
        self._position = 0
        self._prefilled = False
        # What step_traced reads of the position (an index in a tile, an epoch, the history).
        self._index = torch.zeros(1, dtype=torch.long, device=self.device)

    # ----------------------------------------------------------------- public interface

    @property
    def position(self) -> int:
        """Number of inputs seen so far (prompt included)."""
        return self._position

    @property
    def nbytes(self) -> int:
        """Bytes held by the engine's own buffers (caches, histories, filter spectra)."""
        return tensor_bytes(self._buffers())

    def prefill(self, u: torch.Tensor) -> torch.Tensor:
        """Consume a prompt at once and return its outputs.

        Parameters
        ----------
        u : Tensor, shape (batch_size, channels, P), ``1 <= P <= max_len``.

        Returns
        -------
        Tensor, shape (batch_size, channels, P): ``causal_conv(u, h)``, by one FFT convolution.
        """
        if self._prefilled or self._position > 0:
            raise RuntimeError(
                f"prefill must come first, once: this engine is at position {self._position}; "
                "call reset() to start a new sequence"
            )
        self._check_tensor(u, "u")
        expected = (self.batch_size, self.channels)
        if u.dim() != 3 or tuple(u.shape[:2]) != expected:
            raise ValueError(
                f"u must have shape (batch_size, channels, P) = ({expected[0]}, {expected[1]}, P), "
                f"got {tuple(u.shape)}"
            )
        prompt_len = u.shape[-1]
        if not 1 <= prompt_len <= self.max_len:
            raise ValueError(
                f"prompt length must be in [1, max_len={self.max_len}], got {prompt_len}"
            )
        with _ordinary_buffers():
            y = self._prefill(u.detach().to(self.compute_dtype))
        self._position = prompt_len
        self._prefilled = True
        return y.to(self.dtype)

    def extend(self, u: torch.Tensor) -> torch.Tensor:
        """Consume the next ``n`` inputs at once and return their outputs: a prefill at
        position 0, later a continuation of the prompt (chunked prefill). Right after a prefill
        or an extension the FutureFill engines extend by one FFT pass (O((P + n) log) at most);
        otherwise, and for engines without a faster way, the chunk is stepped through. The
        outputs are the same either way.

        Parameters
        ----------
        u : Tensor, shape (batch_size, channels, n), ``1 <= n`` and room left for it.

        Returns
        -------
        Tensor, shape (batch_size, channels, n).
        """
        if self._position == 0:
            return self.prefill(u)
        self._check_tensor(u, "u")
        expected = (self.batch_size, self.channels)
        if u.dim() != 3 or tuple(u.shape[:2]) != expected or u.shape[-1] < 1:
            raise ValueError(
                f"u must have shape (batch_size, channels, n) = ({expected[0]}, {expected[1]}, n), "
                f"n >= 1, got {tuple(u.shape)}"
            )
        if self._position + u.shape[-1] > self.max_len:
            raise RuntimeError(
                f"cannot extend by {u.shape[-1]} past max_len={self.max_len} from position "
                f"{self._position}; call reset()"
            )
        with _ordinary_buffers():
            y = self._extend(u.detach().to(self.compute_dtype))
        if y is None:  # stepped through
            return torch.stack([self.step(u[..., i]) for i in range(u.shape[-1])], dim=-1)
        self._position += u.shape[-1]
        return y.to(self.dtype)

    def step(self, u_t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Consume one input per sequence and return the next output.

        Parameters
        ----------
        u_t : Tensor, shape (batch_size, channels).
        out : Tensor, shape (batch_size, channels), optional
            Where to write the output (h's dtype and device, not a view of the engine's buffers).
            With it the step allocates nothing (in float32 and float64).

        Returns
        -------
        Tensor, shape (batch_size, channels): ``y[position]``; ``out`` itself when given. Without
        ``out`` it is a new tensor the engine never writes to again, even after ``reset()``.
        """
        self._check_row(u_t, "u_t")
        if out is not None:
            self._check_row(out, "out")
        if self._position >= self.max_len:
            raise RuntimeError(f"cannot step past max_len={self.max_len}; call reset()")
        if u_t.requires_grad:  # decoding is inference: keep the buffers out of autograd graphs
            u_t = u_t.detach()
        if self.compute_dtype != self.dtype:
            y = self._step(u_t.to(self.compute_dtype), None)
            y = y.to(self.dtype) if out is None else out.copy_(y)
        else:
            y = self._step(u_t, out)
        self._position += 1
        work = self._scheduled_work()
        if work is not None:
            work.run()
        return y

    # A compiled decoding step splits step() in two: ``step_traced`` (tensor operations only, a
    # fixed-shape function of the engine's buffers and an index tensor, which torch.compile can
    # trace) and ``advance`` (the host's part: the position, and the work it schedules, returned
    # to the caller so that the work of many engines runs batched).

    def prepare_traced(self) -> None:
        """Ready :meth:`step_traced` at the current position (before tracing; again after any
        eager step). Half precisions have no traced step: they step through their float32
        compute dtype, which the traced step does not (a ValueError)."""
        check_traced_dtype(self.dtype, self.compute_dtype)
        self._index.fill_(self._traced_index())

    def step_traced(self, u_t: torch.Tensor) -> torch.Tensor:
        """The output ``(batch, channels)`` at the current position for ``u_t``, by tensor
        operations alone (no checks, no Python state changes); :meth:`advance` must follow."""
        raise NotImplementedError(f"{type(self).__name__} must implement step_traced")

    def advance(self) -> ScheduledWork | None:
        """After :meth:`step_traced`: one position on (host bookkeeping, the index tensor
        updated). Returns the work this position schedules (a tile's FFT level, an epoch's
        refill, deamortized jobs), which the caller must run (:func:`run_scheduled`, batched with
        other engines' work) before the next step; None when there is none."""
        self._position += 1
        work = self._scheduled_work()
        self._index.fill_(self._traced_index())
        return work

    def traced_tensors(self) -> list[torch.Tensor]:
        """The tensors :meth:`step_traced` reads or updates in place (the engine's buffers and
        its index), whose addresses a CUDA graph of the step records."""
        return [*self._buffers(), self._index]

    def reset(self) -> None:
        """Forget the sequence: back to position 0, ready for ``prefill`` or ``step``."""
        self._position = 0
        self._prefilled = False
        with _ordinary_buffers():
            self._reset()

    def copy(self) -> OnlineConvEngine:
        """An engine at this one's position holding a copy of its sequence state, to go on from
        there on its own (forking a sequence): its buffers are its own, the filter's tables
        (:attr:`shared_attributes`) shared. Work in flight (deamortized jobs) is finished
        first. The copy's tensors are ordinary ones whatever the mode it is called in."""
        self._settle()
        memo = {
            id(value): value
            for name in self.shared_attributes
            if (value := getattr(self, name, None)) is not None
        }
        with torch.inference_mode(False), torch.no_grad():
            return copy.deepcopy(self, memo)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(channels={self.channels}, max_len={self.max_len}, "
            f"batch_size={self.batch_size}, dtype={self.dtype}, device={self.device}, "
            f"position={self._position})"
        )

    # ----------------------------------------------------------------- for subclasses

    def _check_tensor(self, x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}, expected {self.dtype} (the dtype of h)")
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device}, expected {self.device} (the device of h)")

    def _check_row(self, x: torch.Tensor, name: str) -> None:
        """One step's tensor: shape (batch_size, channels), h's dtype and device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (batch_size, channels) = "
                f"{self._step_shape}, got {type(x).__name__}"
            )
        if x.shape != self._step_shape:
            raise ValueError(
                f"{name} must have shape (batch_size, channels) = {self._step_shape}, "
                f"got {tuple(x.shape)}"
            )
        if x.dtype != self.dtype or x.device != self.device:
            self._check_tensor(x, name)

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.compute_dtype, device=self.device)

    @abstractmethod
    def _prefill(self, u: torch.Tensor) -> torch.Tensor:
        """Outputs of the prompt ``u`` (batch, channels, P); set up decoding from position P."""

    @abstractmethod
    def _step(self, u_t: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """Output at ``self._position`` for input ``u_t``, written to ``out`` when given, else to
        a tensor the engine never writes again (the caller then advances the position and runs
        the work it schedules)."""

    @abstractmethod
    def _reset(self) -> None:
        """Fresh buffers for an empty sequence of up to ``max_len`` inputs."""

    @abstractmethod
    def _buffers(self) -> list[torch.Tensor]:
        """The tensors the engine owns (counted by ``nbytes``)."""

    def _settle(self) -> None:
        """Finish the work in flight, so that the buffers hold the whole state (before a
        :meth:`copy`); nothing by default."""
        return

    def _extend(self, u: torch.Tensor) -> torch.Tensor | None:
        """Outputs of the inputs ``u`` (batch, channels, n) at ``self._position`` (> 0) at once,
        the engine set up to continue after them; None where the engine has no faster way than
        stepping (the default) or not in its current state."""
        return None

    @abstractmethod
    def _scheduled_work(self) -> ScheduledWork | None:
        """The work the step just taken (``self._position`` already counts it) schedules."""

    @abstractmethod
    def _traced_index(self) -> int:
        """The value of the index tensor ``self._index`` :meth:`step_traced` reads now."""


class ScheduledWork(ABC):
    """Work an engine's position schedules after a step: a tile's FFT level, an epoch's refill,
    deamortized jobs. Works of one class with equal :attr:`key` run as one batched call
    (:meth:`run_batch`): the layers of a model share one schedule, so one FFT call per level
    serves them all."""

    #: Works of the same class and key may run together (shapes, dtype, device, local step).
    key: Hashable = None

    @classmethod
    def run_batch(cls, works: list[ScheduledWork]) -> None:
        """Run ``works`` (same class and key); by default one after the other."""
        for work in works:
            work.run()

    @abstractmethod
    def run(self) -> None:
        """Run this work alone."""


def run_scheduled(works: Iterable[ScheduledWork | None]) -> None:
    """Run every work of ``works`` (None entries skipped), those of one class and key in one
    :meth:`ScheduledWork.run_batch` call."""
    groups: dict[tuple, list[ScheduledWork]] = {}
    for work in works:
        if work is not None:
            groups.setdefault((type(work), work.key), []).append(work)
    for (kind, _), group in groups.items():
        kind.run_batch(group)


def traced_push(
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    head: torch.Tensor,
    u_t: torch.Tensor,
    j: torch.Tensor,
) -> torch.Tensor:
    """One step of a time-major block as a fixed-shape function of the index tensor ``j``
    ``(1,)``, for a traced (compiled) step: ``u_t`` ``(B, D)`` goes to row j of ``inputs``
    ``(n, B, D)``, and ``h[t - j] u_t`` to every row t of ``outputs`` ``(n, B, D)``, the filter
    ``head`` ``(n, 1, D)`` gathered by lag (zero for t < j: compiled, the gather, mask and push
    are one kernel). Returns output row j ``(B, D)``."""
    inputs.index_copy_(0, j, u_t.unsqueeze(0))
    lag = torch.arange(outputs.shape[0], device=outputs.device) - j  # (n,)
    outputs.addcmul_(head.index_select(0, lag.clamp(min=0)) * (lag >= 0).view(-1, 1, 1), u_t)
    return outputs.index_select(0, j).squeeze(0)


def _ordinary_buffers() -> contextlib.AbstractContextManager:
    """Where an engine may allocate its buffers (a prefill, an extension, a reset): ordinary
    tensors whatever mode the caller is in, so that a compiled step's guards see the same kind
    of tensor in every session (an inference tensor after a prefill in inference mode would
    recompile it) and resets outside inference mode may update them."""
    return torch.inference_mode(False)
