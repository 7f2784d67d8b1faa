"""The decoder: one batch of sequences decoded by a model, one token per sequence per step.

:class:`Decoder` owns a decoding session (:func:`futurefill.decoding`) over a model whose time
mixing is :mod:`futurefill.nn`, and the choice between the model's eager forward and one
compiled graph per token::

    with Decoder(model, batch_size=2, max_len=1024, method="continuous") as decoder:
        out = decoder.prefill(prompt_ids)       # (2, P) ids: one parallel pass
        out = decoder.step(out.greedy)          # (2,) ids -> logits (2, vocab), greedy (2,)
        decoder.position, decoder.nbytes        # positions consumed; bytes of decoding state
        decoder.reset()                         # new sequences, same state buffers

Everything that decodes (:func:`futurefill.generate`, the benchmarks, the command line) runs
through it. Ragged prompts (right-padded, with ``prompt_lengths``) are prefilled in one pass:
each moves to end at the longest one's end, and the positions before it are padding that the
session keeps out of every convolution (convolutions are time invariant and the model's only
time mixing, so every sequence gets exactly what it would get alone).

Compiled (``compile=True``): each step after the prefill is one ``torch.compile`` graph of the
model's per-token forward, a fixed-shape function of the engines' buffers and index tensors
(:meth:`~futurefill.nn.DecodingSession.traced_steps`); the host does what depends on the
position (the engines' scheduled work, batched across layers) between graph calls. The graph is
compiled once per model, method, batch size, dtype and device and kept on the model, whatever
the lengths; on CUDA it runs as a CUDA graph (``mode="reduce-overhead"``).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from futurefill.model import check_token_ids
from futurefill.nn import DecodingSession, decoding

__all__ = ["Decoder", "DecoderOutput"]

# A batch-1 token step is bound by reading the weights once per token. On CPU inductor's
# "decompose_mm_pass" turns each (1, k) @ (k, n) product into a fused multiply-and-sum kernel
# spread over the intra-op threads, where MKL's GEMV reads the weights on one core (measured in
# docs/results/cpu-2core/tuning.md). Asked for only where this torch's inductor has the pass's
# CPU case; others compile without.
CPU_COMPILE_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}


class DecoderOutput(NamedTuple):
    """What a prefill or a step gives, for the last position of every sequence.

    logits : Tensor, shape (batch, vocab_size)
    greedy : LongTensor, shape (batch,), the argmax of ``logits`` (lowest id on ties)
    """

    logits: torch.Tensor
    greedy: torch.Tensor


class Decoder:
    """A batch of sequences decoded by ``model``; see the module docstring.

    Parameters
    ----------
    model : nn.Module
        Maps ids ``(batch, length)`` to logits ``(batch, length, vocab_size)`` (or to an object
        with ``.logits``), its time mixing :mod:`futurefill.nn`.
    batch_size : int
        Sequences decoded together.
    max_len : int, optional
        Longest sequence (prompt plus generated tokens fed back); default and maximum the
        model's (its shortest filter).
    method : str
        The online convolution engine of every long convolution
        (:data:`futurefill.online.METHODS`).
    compile : bool
        Each step after the prefill one compiled graph (float32 or float64 models).
    independent_rows : bool
        Every row at its own position: :meth:`start`, :meth:`extend`, ``step(ids, rows)``,
        :meth:`step_and_extend` and :meth:`release` instead of :meth:`prefill` and ``step(ids)``
        (docs/serving.md).
    **engine_options
        The method's knobs (``epoch_len``, ``tile_len``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int,
        max_len: int | None = None,
        method: str = "continuous",
        compile: bool = False,
        independent_rows: bool = False,
        **engine_options: int | None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be a bool, got {compile!r}")
        half = compile and {p.dtype for p in model.parameters()} & {torch.float16, torch.bfloat16}
        if half:
            raise ValueError(
                f"compile=True needs a float32 or float64 model (half precisions decode eagerly, "
                f"through float32), got {str(half.pop()).removeprefix('torch.')} parameters"
            )
        weight = next(model.parameters(), None)
        self.device = weight.device if weight is not None else torch.device("cpu")
        self.model = model
        self.vocab_size: int | None = getattr(getattr(model, "config", None), "vocab_size", None)
        self.session: DecodingSession = decoding(
            model,
            batch_size=batch_size,
            max_len=max_len,
            method=method,
            independent_rows=independent_rows,
            **engine_options,
        )
        self._compiled = compiled_step(model, self.session, self.device) if compile else None
        self._traced = contextlib.ExitStack()  # inside session.traced_steps() once compiled
        self._all_rows = list(range(batch_size))

    @property
    def position(self) -> int:
        """Positions consumed by every sequence (the prompt's padded width included)."""
        return self.session.position

    def row_position(self, row: int) -> int:
        """Positions consumed by ``row`` (independent rows)."""
        return self.session.row_position(row)

    @property
    def packs(self) -> bool:
        """Whether :meth:`step_and_extend` runs as one forward (every module of the model takes
        packed chunks, and the decoder is eager)."""
        return self._compiled is None and self.session.packs

    @property
    def nbytes(self) -> int:
        """Bytes held by the decoding state (engines, histories)."""
        return self.session.nbytes

    @torch.inference_mode()
    def prefill(
        self, input_ids: torch.Tensor, prompt_lengths: Sequence[int] | torch.Tensor | None = None
    ) -> DecoderOutput:
        """Consume every sequence's prompt in one parallel pass (first, once per sequence).

        Parameters
        ----------
        input_ids : LongTensor, shape (batch_size, width)
            Prompts, right-padded when their lengths differ (the padding is never read).
        prompt_lengths : sequence of int or 1-D integer tensor, shape (batch_size,), optional
            Each prompt's length, in ``[1, width]``; default all ``width``.

        Returns
        -------
        DecoderOutput for each prompt's last position.
        """
        if self.position:
            raise RuntimeError(
                f"prefill must come first: the decoder is at position {self.position}; "
                "call reset() to start new sequences"
            )
        ids = check_input_ids(input_ids, self.device)
        batch, max_len = self.session.batch_size, self.session.max_len
        if ids.shape[0] != batch:
            raise ValueError(f"input_ids has batch {ids.shape[0]}, the decoder batch_size={batch}")
        width = ids.shape[1]
        lengths = check_prompt_lengths(prompt_lengths, batch, width)
        longest = max(lengths)
        if longest > max_len:
            raise ValueError(f"prompt length {longest} exceeds the decoder's max_len {max_len}")
        n = torch.tensor(lengths, device=self.device)  # (batch,)
        in_prompt = torch.arange(width, device=self.device) < n[:, None]  # (batch, width)
        self._check_vocabulary(ids[in_prompt])
        start = longest - n  # (batch,): where each prompt begins once it ends at ``longest``
        columns = torch.arange(longest, device=self.device)
        valid = columns >= start[:, None]  # (batch, longest): False at the left padding
        source = (columns - start[:, None]).clamp(0, width - 1)
        prompt = torch.where(valid, ids.gather(1, source), 0)
        with self.session.padded(valid) if min(lengths) < longest else contextlib.nullcontext():
            out = self._output(self.model(prompt))
        self._enter_traced()
        return out

    @torch.inference_mode()
    def start(self, row: int, input_ids: torch.Tensor) -> DecoderOutput:
        """Start a new sequence in ``row`` (independent rows) with its prompt ``(P,)``, in one
        parallel pass over that row alone: the other rows keep their state. Returns the
        prompt's last position's :class:`DecoderOutput` (a batch of one)."""
        ids = self._row_ids(input_ids, "start takes one prompt (P,)")
        if ids.shape[1] > self.session.max_len:
            raise ValueError(
                f"prompt length {ids.shape[1]} exceeds the decoder's max_len {self.session.max_len}"
            )
        self.session.reset_rows([row])
        return self._feed(row, ids)

    @torch.inference_mode()
    def extend(self, row: int, input_ids: torch.Tensor) -> DecoderOutput:
        """Feed the next piece ``(n,)`` of ``row``'s prompt (independent rows; chunked prefill:
        right after :meth:`start` or another extension, one parallel pass, the engines'
        ``extend``). Returns its last position's :class:`DecoderOutput`."""
        return self._feed(row, self._row_ids(input_ids, "extend takes one chunk (n,)"))

    def _row_ids(self, input_ids: torch.Tensor, what: str) -> torch.Tensor:
        """One row's ids ``(n,)`` (or ``(1, n)``) as ``(1, n)``, checked."""
        ids = check_input_ids(input_ids[None] if input_ids.dim() == 1 else input_ids, self.device)
        if ids.shape[0] != 1:
            raise ValueError(f"{what}, got {tuple(input_ids.shape)}")
        self._check_vocabulary(ids)
        return ids

    def _check_vocabulary(self, ids: torch.Tensor) -> None:
        check_token_ids(ids, self.vocab_size or torch.iinfo(torch.long).max, "input_ids")

    def _feed(self, row: int, ids: torch.Tensor) -> DecoderOutput:
        """``ids`` ``(1, n)`` through the model for ``row`` alone, eagerly."""
        self._traced.close()  # the traced steps resume, prepared anew, at the next step
        with self.session.selecting([row]):
            return self._output(self.model(ids), 1)

    @torch.inference_mode()
    def step_and_extend(
        self, ids: torch.Tensor, rows: list[int], row: int, input_ids: torch.Tensor
    ) -> tuple[DecoderOutput, DecoderOutput]:
        """``step(ids, rows)`` and the next piece ``(n,)`` of ``row``'s prompt (independent
        rows; ``row`` at position 0 starts its sequence) in one forward of the model over the
        packed chunk ``(1, len(rows) + n)`` (:meth:`~futurefill.nn.DecodingSession.packing`),
        so that the position-wise layers run once for both: chunked prefill that costs the
        stepping rows about the piece's tokens, not a second forward. Returns the steps'
        :class:`DecoderOutput` and the piece's last position's. Compiled decoders and models
        with a module that cannot take packed chunks run the two one after the other."""
        chunk = self._row_ids(input_ids, "step_and_extend takes one prompt piece (n,)")
        ids = check_input_ids(ids[None], self.device)[0]
        if len(ids) != len(rows):
            raise ValueError(f"ids has {len(ids)} tokens for {len(rows)} rows")
        session = self.session
        if session.row_position(row) == 0:
            session.reset_rows([row])
        if self._compiled is not None or not session.packs:
            piece = self._feed(row, chunk)
            return self.step(ids, rows), piece
        self._traced.close()
        with session.packing(rows, row):
            logits = all_logits(self.model(torch.cat([ids, chunk[0]])[None]), 1)[0]
        steps, last = logits[: len(rows)], logits[-1:]
        return DecoderOutput(steps, steps.argmax(dim=-1)), DecoderOutput(last, last.argmax(dim=-1))

    def release(self, row: int) -> None:
        """Free ``row`` (independent rows): back to position 0, ready for :meth:`start`."""
        self.session.reset_rows([row])

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, rows: list[int] | None = None) -> DecoderOutput:
        """Feed one token per sequence, ``(batch_size,)``; the logits of the next position.
        With independent rows: one token per row of ``rows`` ``(len(rows),)``, each continuing
        that row from its own position; the others wait."""
        if self.session.independent_rows:
            return self._step_rows(ids, rows)
        if self._compiled is None or not self.session.traced:
            out = self._output(self.model(ids[:, None]))  # eager (a compiled decoder's first
            self._enter_traced()  # step when no prompt was prefilled)
            return out
        return DecoderOutput(*self._compiled_step(ids[:, None]))

    def _compiled_step(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.session.traced_positions():
            out = self._compiled(ids)
        self.session.advance()
        return out

    def reset(self) -> None:
        """Start new sequences: every state back to position 0, allocations kept."""
        self._traced.close()
        self.session.reset()

    def close(self) -> None:
        """Release the model's modules (ordinary modules again)."""
        self._traced.close()
        self.session.close()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        compiled = ", compiled" if self._compiled is not None else ""
        session = self.session
        return (
            f"Decoder(batch_size={session.batch_size}, max_len={session.max_len}, "
            f"method={session.method!r}{compiled}, position={self.position}, nbytes={self.nbytes})"
        )

    def _step_rows(self, ids: torch.Tensor, rows: list[int] | None) -> DecoderOutput:
        if rows is None:
            raise ValueError("with independent rows, step(ids, rows) says whose tokens these are")
        # Compiled: one fixed-shape step of every row (the others fed a placeholder, their
        # outputs dropped), then only the given rows move on. The placeholder reaches the other
        # rows' states, so this is for steps where every other row is free (it is cleared when
        # it starts); a step beside a row that has started and waits (in the middle of its
        # chunked prompt, say) runs eagerly.
        session, live = self.session, set(rows)
        waiting = any(session.row_position(r) for r in self._all_rows if r not in live)
        if self._compiled is None or waiting:
            self._traced.close()
            with session.selecting(rows):
                return self._output(self.model(ids[:, None]), len(rows))
        every = torch.zeros(self.session.batch_size, dtype=torch.long, device=self.device)
        every[rows] = ids
        with self.session.selecting(self._all_rows):
            self._enter_traced()
            with self.session.traced_positions():
                logits, greedy = self._compiled(every[:, None])
        self.session.advance(rows)
        return DecoderOutput(logits[rows], greedy[rows])

    def _enter_traced(self) -> None:
        if self._compiled is not None and not self.session.traced:
            self._traced.enter_context(self.session.traced_steps())

    def _output(self, model_output: Any, batch: int | None = None) -> DecoderOutput:
        logits = last_logits(model_output, self.session.batch_size if batch is None else batch)
        return DecoderOutput(logits, logits.argmax(dim=-1))


def compiled_step(
    model: nn.Module, session: DecodingSession, device: torch.device
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The compiled token step of ``model`` decoding in ``session`` on ``device``: ids
    ``(batch, 1)`` to the last logits ``(batch, vocab)`` and their argmax ``(batch,)``.

    One per model and (engine method and options, batch size, dtype, device), kept on the model,
    each a function with a code object of its own: dynamo keeps graphs, and counts them against
    its recompile limit (8), per code object, and runs every call past the limit eagerly (one
    function for every step would reach it with the eighth such combination in a process)."""
    dtype = getattr(next(model.parameters(), None), "dtype", None)
    options = tuple(sorted(session.engine_options.items()))
    rows = session.independent_rows
    key = (session.method, options, session.batch_size, rows, dtype, torch.device(device))
    steps = model.__dict__.setdefault("_futurefill_compiled_steps", {})  # not a state-dict key
    if key not in steps:

        def token_step(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = last_logits(model(ids), ids.shape[0])
            return logits, logits.argmax(dim=-1)

        code = token_step.__code__.replace()  # equal, but another object
        token_step = types.FunctionType(
            code, token_step.__globals__, token_step.__name__, closure=token_step.__closure__
        )
        if torch.device(device).type == "cuda":
            steps[key] = _outputs_cloned(
                torch.compile(token_step, dynamic=False, mode="reduce-overhead")
            )
        else:
            cpu_options = CPU_COMPILE_OPTIONS if _inductor_decomposes_cpu_mm() else None
            steps[key] = torch.compile(token_step, dynamic=False, options=cpu_options)
    return steps[key]


def _outputs_cloned(step: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], Any]:
    """``step`` with its outputs copied: a CUDA graph's outputs live in its memory pool, which
    its next replay overwrites, and a caller (a streamer, a list of logits) may keep them."""

    def cloned(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(t.clone() for t in step(ids))

    return cloned


def _inductor_decomposes_cpu_mm() -> bool:
    """Whether this torch's inductor has the CPU case of its ``decompose_mm_pass``."""
    try:
        from torch._inductor.fx_passes import decompose_mem_bound_mm
    except ImportError:
        return False
    return hasattr(decompose_mem_bound_mm, "CPU_MAX_FIRST_DIMENSION_DECOMPOSITION")


def last_logits(output: Any, batch: int) -> torch.Tensor:
    """The last position's logits ``(batch, vocab)`` of a model's output ``(batch, n, vocab)``
    (a tensor, or an object with ``.logits``)."""
    return all_logits(output, batch)[:, -1]


def all_logits(output: Any, batch: int) -> torch.Tensor:
    """The logits ``(batch, n, vocab)`` of a model's output (a tensor, or an object with
    ``.logits``), or a TypeError saying what decoding needs."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(
            "decoding needs a model whose forward returns logits (batch, length, vocab_size), or "
            f"an object with .logits; got {shape}"
        )
    return logits


def check_input_ids(input_ids: Any, device: torch.device) -> torch.Tensor:
    """``input_ids`` as a LongTensor ``(batch, length)`` on ``device``, or a clear error."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if (
        input_ids.dtype.is_floating_point
        or input_ids.dtype.is_complex
        or input_ids.dtype == torch.bool
    ):
        raise TypeError(f"input_ids must have an integer dtype (torch.long), got {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(
            f"input_ids must have shape (batch, length) with batch, length >= 1, "
            f"got {tuple(input_ids.shape)}"
        )
    if input_ids.device != device:
        raise ValueError(f"input_ids are on {input_ids.device}, the model on {device}")
    return input_ids.long()


def check_prompt_lengths(
    prompt_lengths: Sequence[int] | torch.Tensor | None, batch: int, width: int
) -> list[int]:
    """Each prompt's length (default ``width``), checked to be ints in ``[1, width]``."""
    if prompt_lengths is None:
        return [width] * batch
    if isinstance(prompt_lengths, torch.Tensor):
        if prompt_lengths.dtype.is_floating_point or prompt_lengths.dtype == torch.bool:
            raise TypeError(f"prompt_lengths must be integers, got dtype {prompt_lengths.dtype}")
        if prompt_lengths.dim() != 1:
            raise ValueError(
                f"prompt_lengths must be 1-D (batch,), got shape {tuple(prompt_lengths.shape)}"
            )
        prompt_lengths = prompt_lengths.tolist()
    lengths = list(prompt_lengths)
    if len(lengths) != batch:
        raise ValueError(f"prompt_lengths has {len(lengths)} entries, input_ids has batch {batch}")
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"prompt_lengths must hold ints, got {type(length).__name__}")
        if not 1 <= length <= width:
            raise ValueError(
                f"prompt_lengths must be in [1, input_ids.shape[1]={width}], got {length}"
            )
    return lengths
