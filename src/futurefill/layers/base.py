"""The interface every sequence-mixing layer implements, and the decoding state of one layer.

A mixer maps ``(batch, length, d_model)`` to ``(batch, length, d_model)`` causally. It has two
ways to run:

* ``forward(x)``: the whole sequence at once, long convolutions by FFT (training, scoring);
* ``setup_cache`` / ``prefill`` / ``step``: one token at a time, every long convolution driven
  by an online engine (:mod:`futurefill.online`), the engine's method chosen by the caller::

      cache = mixer.setup_cache(batch_size, max_len, "continuous")
      y_prompt = mixer.prefill(x_prompt, cache)  # optional, first: (B, P, D) -> (B, P, D)
      y_t = mixer.step(x_t, cache)              # (B, D) -> (B, D), once per token
      cache.reset()                             # back to an empty sequence

Both give the same outputs to rounding. ``prefill`` and ``step`` run without autograd (the engines
hold detached filters): decoding is for inference. Each mixer says what its long filters are
(:meth:`Mixer.long_filters`); ``setup_cache`` materialises them once and hands them to the engines,
so the cache holds a snapshot of the filters: build a new cache after changing the weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from futurefill.layers.shortconv import ShortConvCache
from futurefill.online import make_engine
from futurefill.online.base import OnlineConvEngine

__all__ = ["Mixer", "MixerCache"]


class MixerCache:
    """Decoding state of one mixer: its online convolution engines and short-conv ring buffer.

    Parameters
    ----------
    engines : sequence of OnlineConvEngine
        One per long filter bank, in the order the layer calls them within a step.
    short : ShortConvCache, optional
        The ring buffer of the layer's short convolution (Hyena), if it has one.
    """

    def __init__(self, engines: Sequence[OnlineConvEngine], short: ShortConvCache | None = None):
        if not engines:
            raise ValueError("a mixer cache needs at least one engine")
        self.engines = tuple(engines)
        self.short = short

    @property
    def position(self) -> int:
        """Number of tokens consumed so far (prompt included)."""
        return self.engines[0].position

    @property
    def nbytes(self) -> int:
        """Bytes held by the engines and the ring buffer."""
        short = self.short.nbytes if self.short is not None else 0
        return sum(engine.nbytes for engine in self.engines) + short

    def reset(self) -> None:
        """Forget the sequence: every engine and buffer back to position 0."""
        for engine in self.engines:
            engine.reset()
        if self.short is not None:
            self.short.reset()


class Mixer(nn.Module, ABC):
    """Base class of the causal sequence-mixing layers.

    Parameters
    ----------
    d_model : int
        Width of the input and output, ``(batch, length, d_model)``.
    max_len : int
        Filter length: the longest sequence the layer can process.
    """

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.d_model = d_model
        self.max_len = max_len

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Whole-sequence output: ``(batch, length, d_model) -> (batch, length, d_model)``."""

    @abstractmethod
    def long_filters(self) -> list[torch.Tensor]:
        """The long causal filters the decode engines run, each ``(channels, max_len)``."""

    @abstractmethod
    def prefill(self, x: torch.Tensor, cache: MixerCache) -> torch.Tensor:
        """Outputs of a prompt ``(batch, P, d_model)``; seeds the cache for step P."""

    @abstractmethod
    def step(self, x_t: torch.Tensor, cache: MixerCache) -> torch.Tensor:
        """Output for one more input per sequence: ``(batch, d_model) -> (batch, d_model)``."""

    def engine_batch_size(self, batch_size: int) -> int:
        """Rows each engine decodes per step for ``batch_size`` sequences: ``batch_size``, unless
        the layer folds its channels into the batch to share one filter bank among them."""
        return batch_size

    def short_cache(self, batch_size: int) -> ShortConvCache | None:
        """The ring buffer of the layer's short convolution, if it has one."""
        return None

    def setup_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        method: str = "continuous",
        **engine_options: int,
    ) -> MixerCache:
        """Allocate the decoding state for ``batch_size`` sequences of up to ``max_len`` tokens.

        Parameters
        ----------
        batch_size : int
        max_len : int, optional
            Longest sequence (prompt plus generated); default and maximum ``self.max_len``.
        method : {"continuous", "epoched", "naive"}
            The online convolution engine (see :mod:`futurefill.online`).
        **engine_options
            ``epoch_len`` (epoched) or ``tile_len`` (continuous).
        """
        max_len = self.max_len if max_len is None else max_len
        if not 1 <= max_len <= self.max_len:
            raise ValueError(
                f"cache max_len must be in [1, {self.max_len}] (the filter length), got {max_len}"
            )
        with torch.no_grad():
            filters = self.long_filters()
        engines = [
            make_engine(
                h,
                method,
                max_len=max_len,
                batch_size=self.engine_batch_size(batch_size),
                **engine_options,
            )
            for h in filters
        ]
        return MixerCache(engines, self.short_cache(batch_size))

    def _check_length(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must have shape (batch, length, d_model={self.d_model}), got {tuple(x.shape)}"
            )
        if x.shape[1] > self.max_len:
            raise ValueError(
                f"sequence length {x.shape[1]} exceeds the filter length max_len={self.max_len}"
            )
