"""The extension point of :mod:`futurefill.nn`: a module that keeps decoding state in a session
(:class:`DecodingModule`), its state (:class:`ModuleState`, the rows contract every state
implements) and what a call of the model feeds (:class:`Chunk`). docs/extension.md has a worked
example."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from futurefill.checks import check_int
from futurefill.online import ScheduledWork, TracedWork

if TYPE_CHECKING:
    from futurefill.nn.session import DecodingSession

__all__ = ["Chunk", "DecodingModule", "ModuleState"]


@dataclass(frozen=True)
class Chunk:
    """What one call of the model in a session holds.

    rows : the rows fed, each ``n`` positions (input ``(len(rows), n, ...)``), or with
        ``piece_row`` the rows stepping one position each (input ``(1, len(rows) + n, ...)``:
        their tokens, then ``n`` of ``piece_row``);
    traced : a compiled step of every row (tensor operations only).
    """

    rows: tuple[int, ...]
    n: int
    piece_row: int | None = None
    traced: bool = False

    def parts(self) -> list[tuple[tuple[int, ...], int]]:
        """``(rows, n)`` of each part the modules feed: one, or a packed chunk's two."""
        if self.piece_row is None:
            return [(self.rows, self.n)]
        return [(self.rows, 1), ((self.piece_row,), self.n)]


class ModuleState(ABC):
    """What one module keeps between the calls of a session, for every row: the rows contract.
    Subclass it for a layer with decoding state of its own kind (docs/extension.md).

    Parameters
    ----------
    session : DecodingSession
    name : str
        The module's qualified name in the model (for error messages).
    """

    def __init__(self, session: DecodingSession, name: str):
        self.session = session
        self.name = name or "the model"
        self.dtype: torch.dtype | None = None  # of the inputs, fixed by the first chunk
        self.device: torch.device | None = None
        self._call = -1  # the session's call this state last fed

    def run(self, feed: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """The module's output for the session's current chunk: ``feed(rows, *parts)`` (the
        module's own) for each part of it (:meth:`Chunk.parts`), packed parts put back in
        order, ``(1, R + n, ...)``."""
        session = self.session
        chunk = session.chunk
        if chunk is None:
            raise RuntimeError(
                f"{self.name!r} is in a decoding session: call the model through it "
                "(session.feed) or a Decoder"
            )
        if not chunk.traced:
            if self._call == session.calls:
                raise RuntimeError(f"{self.name!r} ran twice in one call of the model")
            self._call = session.calls
        if chunk.piece_row is None:
            return feed(chunk.rows, *inputs)
        stepping = len(chunk.rows)
        steps = feed(chunk.rows, *(x[0, :stepping].unsqueeze(1) for x in inputs))
        piece = feed((chunk.piece_row,), *(x[:, stepping:] for x in inputs))
        return torch.cat([steps.transpose(0, 1), piece], dim=1)

    def check_dtype(self, x: torch.Tensor, module: nn.Module) -> None:
        """Raise unless ``x`` has the dtype and device of the session's first chunk (a model
        cast or moved during a session)."""
        if self.dtype is not None and (x.dtype != self.dtype or x.device != self.device):
            raise RuntimeError(
                f"{type(module).__name__} {self.name!r} started this decoding session with "
                f"{self.dtype} inputs on {self.device} and now gets {x.dtype} on {x.device}: the "
                "model's dtype or device changed during the session; open a new session"
            )
        self.dtype, self.device = x.dtype, x.device

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held."""

    @abstractmethod
    def reset_rows(self, rows: Sequence[int]) -> None:
        """Those rows back to position 0 (at ``session.positions`` until after this), the
        others untouched."""

    @abstractmethod
    def save_row(self, row: int) -> list:
        """A copy of ``row``'s state at its position (``session.positions[row]``) that later
        calls never change: tensors (or objects with ``nbytes``), what the row's next inputs
        need and no more. Ordinary tensors (:func:`torch.inference_mode` off)."""

    @abstractmethod
    def load_rows(self, rows: Sequence[int], saved: list) -> None:
        """Each of ``rows`` (just reset) takes the state :meth:`save_row` gave, to go on from
        it on its own (the session sets their positions); ``saved`` is not changed."""

    def prepare_traced(self) -> None:
        """Ready the state for a compiled step of every row (:meth:`DecodingSession.feed_traced`)
        at their positions; again after any other call. Nothing by default."""
        return

    def traced_tensors(self) -> list[torch.Tensor]:
        """The tensors a compiled step reads or updates in place; none by default."""
        return []

    #: Whether a compiled step leaves the state a part to run on the host (:meth:`advance`);
    #: otherwise the step runs wholly in graphs: its traced feed and :meth:`traced_work`.
    advances_on_host: bool = False

    def advance(self, rows: Sequence[int]) -> list[ScheduledWork | None]:
        """Where :attr:`advances_on_host`, after a compiled step: the host's part for ``rows``
        (at ``session.positions``, not yet counted), and the work it schedules."""
        return []

    def traced_work(self, rows: Sequence[int]) -> list[TracedWork]:
        """After a compiled step of ``rows`` (at ``session.positions``, not yet counted), the
        work it schedules as the step's graph runs it (:class:`~futurefill.online.TracedWork`:
        tensor operations keyed by what they do, with where as a device tensor); none by
        default."""
        return []


class DecodingModule(nn.Module, ABC):
    """Base class of the modules that keep their decoding state in a session. In a session
    their forward calls ``self._state.run(feed, *inputs)`` with their ``feed(rows, *inputs)``.

    Parameters
    ----------
    max_len : int or None
        Longest sequence the module can process (its filter length); None: no limit.
    """

    def __init__(self, max_len: int | None):
        super().__init__()
        self.max_len = None if max_len is None else check_int(max_len, "max_len")
        self._state: ModuleState | None = None

    @property
    def decoding(self) -> bool:
        """Whether the module is in a decoding session (its forward continues rows)."""
        return self._state is not None

    @abstractmethod
    def open_state(self, session: DecodingSession, name: str) -> ModuleState:
        """The state this module keeps in ``session`` (called once, when the session opens)."""
