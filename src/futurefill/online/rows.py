"""The rows form of an online convolution: one state for ``batch_size`` rows, each row a
sequence at its own position, what a decoding session keeps for one long convolution.

Positions belong to the caller (a :class:`~futurefill.nn.DecodingSession` keeps one positions
tensor for the whole model): every method that moves rows takes ``positions``, where those rows
are before the call, and a rows engine keeps only what its schedule derives from them (a place
in a tile, say). Its life cycle, for rows ``r`` at positions ``p``::

    y = engine.extend(u, rows, start)        # (R, D, n): n inputs of rows all at ``start``
    y, work = engine.step(u, rows, p)         # (R, D): one input each; work to run before
    run_scheduled(work)                       #   those rows' next input (batched across layers)
    engine.reset_rows(rows, p)                # back to position 0, the other rows untouched
    saved = engine.save_rows(rows, p)         # a copy of rows all at position p (a fork's source)
    engine.load_rows(others, p, saved)        # rows just reset go on from it, each on its own

and for a compiled step of every row, :meth:`RowsEngine.step_traced` (tensor operations only)
then either :meth:`RowsEngine.traced_work` (the work the step schedules as a graph runs it:
tensor operations keyed by what they do, with the rows and positions they do it at as a device
tensor) or, for an engine without that form, :meth:`RowsEngine.advance` of the rows that really
stepped (the host's part, whose work runs between graphs).

A method declares its own rows form (:attr:`OnlineConvEngine.rows_engine`,
:class:`~futurefill.online.continuous.ContinuousRows` for Continuous-FutureFill);
:class:`PerRowEngines` gives every other method one: an engine of batch one per row.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from futurefill.online.base import OnlineConvEngine, ScheduledWork

__all__ = ["PerRowEngines", "RowsEngine", "TracedWork"]


@dataclass(frozen=True)
class TracedWork:
    """The work a compiled step of some rows schedules in one engine, in the form a graph of the
    step runs it: ``run(buffers, pattern, args)``, tensor operations alone, where

    buffers : tuple of tuples of Tensors, for every engine of one ``group`` (the layers of a
        model: their work runs batched) the tensors it reads and updates in place;
    pattern : hashable, *what* the work does (which FFT levels, for how many rows): one graph
        per distinct pattern serves every position;
    args : tuple of int, *where* it does it (rows, positions): the host writes them into a
        device tensor ``(len(args),)`` before each replay.

    Works of one ``run``, ``group``, ``pattern`` and ``args`` run as one call.
    """

    run: Callable[[tuple[tuple[torch.Tensor, ...], ...], Hashable, torch.Tensor], None]
    group: Hashable
    pattern: Hashable
    args: tuple[int, ...]
    buffers: tuple[torch.Tensor, ...]


class RowsEngine(ABC):
    """Online causal convolution of ``batch_size`` rows at their own positions; see the module
    docstring. A row's outputs are ``causal_conv`` of its own inputs since its last reset,
    whatever the other rows do.

    Attributes
    ----------
    batch_size, channels, max_len : int
    dtype, device : of the filters ``h`` ``(channels, filter_len)`` (and of every input).
    """

    batch_size: int
    channels: int
    max_len: int
    dtype: torch.dtype
    device: torch.device
    #: Whether a compiled step's work runs wholly in its graphs: :meth:`step_traced` keeps the
    #: engine's own places, and the work the positions schedule is :meth:`traced_work`. False:
    #: :meth:`advance` runs on the host after each compiled step.
    schedules_in_graph: ClassVar[bool] = False

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of the engine's buffers."""

    @abstractmethod
    def extend(self, u: torch.Tensor, rows: Sequence[int], start: int) -> torch.Tensor:
        """The next ``n`` inputs ``u`` ``(len(rows), channels, n)`` of ``rows``, all at position
        ``start``; their outputs, same shape (a prompt, or a piece of one)."""

    @abstractmethod
    def step(
        self, u: torch.Tensor, rows: Sequence[int], positions: Sequence[int]
    ) -> tuple[torch.Tensor, list[ScheduledWork | None]]:
        """One input per row ``u`` ``(len(rows), channels)``, the rows at ``positions``: their
        outputs ``(len(rows), channels)``, and the work the step schedules (to run before those
        rows' next input, :func:`~futurefill.online.run_scheduled`)."""

    @abstractmethod
    def reset_rows(self, rows: Sequence[int], positions: Sequence[int]) -> None:
        """``rows`` (reached ``positions``) back to position 0; the others untouched."""

    @abstractmethod
    def save_rows(self, rows: Sequence[int], position: int) -> list:
        """A copy of the state of ``rows``, all at ``position``, that later calls never change:
        tensors (and objects with ``nbytes``) holding what the rows' next inputs need, no
        more."""

    @abstractmethod
    def load_rows(self, rows: Sequence[int], position: int, saved: list) -> None:
        """``rows`` (reset, as many as were saved) take the state :meth:`save_rows` gave at
        ``position``: from now on each goes on exactly as the saved rows would have; ``saved``
        is not changed."""

    @abstractmethod
    def prepare_traced(self, positions: Sequence[int]) -> None:
        """Ready :meth:`step_traced` for every row at ``positions`` (before a compiled step, again
        after any other call). A ValueError where the engine has no traced step (half
        precisions)."""

    @abstractmethod
    def step_traced(self, u: torch.Tensor) -> torch.Tensor:
        """Every row's output ``(batch_size, channels)`` for ``u`` ``(batch_size, channels)``, by
        tensor operations alone; :meth:`traced_work` or :meth:`advance` of the rows that stepped
        must follow. A row that did not step must be reset before it is used again (its state
        received this input)."""

    def advance(self, rows: Sequence[int], positions: Sequence[int]) -> list[ScheduledWork | None]:
        """After :meth:`step_traced`: ``rows`` (at ``positions`` before it) one position on; the
        work that schedules, run on the host. What an engine without :meth:`traced_work`
        implements."""
        raise NotImplementedError(f"{type(self).__name__} steps compiled through traced_work")

    @abstractmethod
    def traced_tensors(self) -> list[torch.Tensor]:
        """What :meth:`step_traced` reads or updates in place (addresses a CUDA graph records)."""

    def traced_work(self, rows: Sequence[int], positions: Sequence[int]) -> list[TracedWork]:
        """For an engine that :attr:`schedules_in_graph`, after :meth:`step_traced`: the work
        ``rows`` (at ``positions`` before it) schedule, as tensor operations a graph runs
        (:class:`TracedWork`, each compiled once per pattern); none by default."""
        return []


class PerRowEngines(RowsEngine):
    """The rows form of a method without one of its own: an engine of the method for each row
    (batch one), each with a snapshot of the same filters. A step of R rows is R engine steps.

    Parameters
    ----------
    engine : type of OnlineConvEngine
    h : Tensor, shape (channels, filter_len)
    max_len, batch_size : as in :class:`RowsEngine`.
    **options
        The constructor arguments of ``engine`` (its knobs, a deamortized ``worker``).
    """

    def __init__(
        self,
        engine: type[OnlineConvEngine],
        h: torch.Tensor,
        *,
        max_len: int | None = None,
        batch_size: int = 1,
        **options: object,
    ):
        self.engines = [
            engine(h, max_len=max_len, batch_size=1, **options) for _ in range(batch_size)
        ]
        first = self.engines[0]
        self.batch_size, self.channels, self.max_len = batch_size, first.channels, first.max_len
        self.dtype, self.device = first.dtype, first.device

    @property
    def nbytes(self) -> int:
        return sum(engine.nbytes for engine in self.engines)

    def extend(self, u: torch.Tensor, rows: Sequence[int], start: int) -> torch.Tensor:
        parts = [self.engines[row].extend(u[i : i + 1]) for i, row in enumerate(rows)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def step(
        self, u: torch.Tensor, rows: Sequence[int], positions: Sequence[int]
    ) -> tuple[torch.Tensor, list[ScheduledWork | None]]:
        parts = [self.engines[row].step(u[i : i + 1]) for i, row in enumerate(rows)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), []

    def reset_rows(self, rows: Sequence[int], positions: Sequence[int]) -> None:
        for row in rows:
            self.engines[row].reset()

    def save_rows(self, rows: Sequence[int], position: int) -> list:
        return [self.engines[row].copy() for row in rows]

    def load_rows(self, rows: Sequence[int], position: int, saved: list) -> None:
        for row, engine in zip(rows, saved, strict=True):
            self.engines[row] = engine.copy()

    def prepare_traced(self, positions: Sequence[int]) -> None:
        for engine in self.engines:
            engine.prepare_traced()

    def step_traced(self, u: torch.Tensor) -> torch.Tensor:
        parts = [engine.step_traced(u[i : i + 1]) for i, engine in enumerate(self.engines)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def advance(self, rows: Sequence[int], positions: Sequence[int]) -> list[ScheduledWork | None]:
        return [self.engines[row].advance() for row in rows]

    def traced_tensors(self) -> list[torch.Tensor]:
        return [t for engine in self.engines for t in engine.traced_tensors()]

    def __repr__(self) -> str:
        return f"PerRowEngines({self.batch_size} x {self.engines[0]!r})"
