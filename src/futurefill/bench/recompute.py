"""The no-cache baseline of the benchmarks: every step recomputes from all the inputs so far.

:class:`Recompute` keeps the inputs in one preallocated buffer, time last, and at step t runs its
:meth:`~Recompute.forward` on the first t + 1 of them: what a convolutional model without a
generation cache does, O(t log t) a step and O(L^2 log L) for L steps, holding only the inputs.
The layer benchmark's ``recompute`` (:class:`~futurefill.bench.layer.RecomputeConv`) and the
model benchmark's (:class:`~futurefill.bench.model.RecomputeStepper`) are its two forwards.
"""

from __future__ import annotations

from typing import Any

import torch


class Recompute:
    """A stepper without a cache over the input buffer ``inputs`` (``(..., max_len)``)."""

    def __init__(self, inputs: torch.Tensor):
        self._inputs, self._t = inputs, 0

    @property
    def nbytes(self) -> int:
        """Bytes of the input buffer, all it holds."""
        return self._inputs.numel() * self._inputs.element_size()

    def step(self, x_t: torch.Tensor) -> Any:
        """Append the input of the next position; :meth:`forward` of every input so far."""
        t = self._t
        self._inputs[..., t] = x_t
        self._t = t + 1
        return self.forward(self._inputs[..., : t + 1])

    def forward(self, prefix: torch.Tensor) -> Any:
        """The output at the last position of ``prefix`` (the inputs so far)."""
        raise NotImplementedError
