"""Test helpers for models built from :mod:`futurefill.nn`.

:func:`assert_decoding_matches_forward` is the check to run on your own model: teacher-forced
decoding (the model's forward inside a decoding session, fed the given ids) against the same
model's parallel forward. A model that mixes time outside futurefill.nn (an ``nn.Conv1d`` with
padding, a ``cumsum`` over time, attention without a cache) sees only one position per step
while decoding, and fails here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from futurefill import online
from futurefill.nn import DecodingModule, decoding, decoding_max_len
from futurefill.nn.conv import FilterLengthError

__all__ = ["assert_decoding_matches_forward", "default_rtol"]

# Error allowed, relative to the largest logit of the parallel forward: float64 rounding grows
# with depth and length far below 1e-9; float32 stays near 1e-6 for small models.
_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def default_rtol(dtype: torch.dtype) -> float:
    """The tolerance :func:`assert_decoding_matches_forward` uses for logits of ``dtype``."""
    return _RTOL.get(dtype, 1e-4)


def _logits(output: Any) -> torch.Tensor:
    return getattr(output, "logits", output)


@torch.no_grad()
def assert_decoding_matches_forward(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    methods: Iterable[str] = online.METHODS,
    prompt_lens: Iterable[int] | None = None,
    rtol: float | None = None,
    **engine_options: int,
) -> None:
    """Raise AssertionError unless decoding ``input_ids`` gives the logits of ``model(input_ids)``.

    For every method and every prompt length P: inside a fresh decoding session (its
    ``max_len`` twice the input's, within the model's limit, as generation's sessions are longer
    than their input) the model gets ``input_ids[:, :P]`` as one chunk (none when P = 0), then
    one position at a time; the logits of every position are compared with the parallel
    forward's.

    Parameters
    ----------
    model : nn.Module
        Forward maps ids ``(batch, length)`` to logits ``(batch, length, vocab)`` (or an object
        with ``.logits``).
    input_ids : LongTensor, shape (batch, length), ``length >= 2``.
    methods : iterable of str
        Engine methods to check (default: all).
    prompt_lens : iterable of int, optional
        Default ``(0, length // 2)``: stepping from the first token, and after a prompt.
    rtol : float, optional
        Largest error allowed, relative to the largest magnitude of the forward's logits;
        default by dtype (:func:`default_rtol`: 1e-9 float64, 1e-4 float32).
    **engine_options
        ``epoch_len`` or ``tile_len``, passed to the session.

    The error names the method, the prompt length, the first position that differs, its error
    and the tolerance.
    """
    if not any(isinstance(m, DecodingModule) for m in model.modules()):
        raise AssertionError(
            f"{type(model).__name__} has no futurefill.nn modules, so it cannot decode"
        )
    batch, length = input_ids.shape
    reference = _logits(model(input_ids))
    scale = float(reference.abs().max())
    tol = (default_rtol(reference.dtype) if rtol is None else rtol) * max(scale, 1e-30)
    prompt_lens = (0, length // 2) if prompt_lens is None else tuple(prompt_lens)
    # Longer than the input, as generation's sessions are: a filter whose taps depend on the
    # length asked for (filter(n) != filter(N)[:, :n]) decodes wrongly only then.
    limit = decoding_max_len(model)
    max_len = 2 * length if limit is None else max(length, min(limit, 2 * length))
    for method in methods:
        takers = online.engine_options()
        options = {k: v for k, v in engine_options.items() if method in takers.get(k, ())}
        for prompt_len in prompt_lens:
            try:
                with decoding(
                    model, batch_size=batch, max_len=max_len, method=method, **options
                ) as session:
                    prompt = input_ids[:, :prompt_len]
                    chunks = [_logits(session.feed(prompt))] if prompt_len else []
                    for t in range(prompt_len, length):
                        chunks.append(_logits(session.feed(input_ids[:, t : t + 1])))
            except FilterLengthError as error:
                raise AssertionError(str(error)) from error
            decoded = torch.cat(chunks, dim=1)
            if decoded.shape != reference.shape:
                raise AssertionError(
                    f"method={method!r}, prompt_len={prompt_len}: decoding gave logits of shape "
                    f"{tuple(decoded.shape)}, the forward {tuple(reference.shape)}"
                )
            error = (decoded - reference).abs().flatten(2).amax(dim=(0, 2))  # (length,)
            bad = (~(error <= tol)).nonzero()
            if len(bad):
                t = int(bad[0])
                raise AssertionError(
                    f"method={method!r}, prompt_len={prompt_len}: decoding differs from the "
                    f"parallel forward first at position {t}: max abs error {float(error[t]):.3g} "
                    f"> {tol:.3g} (rtol {tol / max(scale, 1e-30):.1g} of the logits' scale "
                    f"{scale:.3g}); worst over all positions {float(error.max()):.3g}"
                )
