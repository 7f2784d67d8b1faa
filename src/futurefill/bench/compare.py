"""Every method on one prompt, timed, their tokens compared (``futurefill generate --compare``).

:func:`compare_methods` generates the same continuation (same seed) with each method; FutureFill
must give exactly naive decoding's tokens, only faster (at lengths where the convolutions
dominate the cost of a step). :func:`mismatch` names the first disagreement and
:func:`format_table` prints the timings.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from futurefill.online import METHODS

__all__ = [
    "METHOD_ORDER",
    "CompareResult",
    "compare_methods",
    "format_table",
    "generate_with",
    "mismatch",
]

METHOD_ORDER = tuple(METHODS)  # registration order: naive first, the baseline of the speedups


@dataclass
class CompareResult:
    """One method's run in :func:`compare_methods`."""

    method: str
    tokens: torch.Tensor  # (B, max_new_tokens) generated ids
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens.numel() / self.seconds if self.seconds > 0 else float("inf")


def generate_with(
    model,
    prompt_ids,
    max_new_tokens,
    method,
    seed,
    sampling,
    streamer=None,
    compile=False,
    prefill_chunk=None,
):
    """``generate`` with ``method`` from ``seed``, where ``"compiled"`` is continuous with
    ``compile=True``; ``sampling``: the keyword arguments that shape the sampling."""
    from futurefill.generation import generate

    generator = torch.Generator().manual_seed(seed)
    compile = compile or method == "compiled"
    return generate(
        model,
        prompt_ids,
        max_new_tokens,
        method="continuous" if method == "compiled" else method,
        compile=compile,
        generator=generator,
        streamer=streamer,
        prefill_chunk=prefill_chunk,
        **sampling,
    )


def compare_methods(
    model,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    seed: int = 0,
    methods: tuple[str, ...] = METHOD_ORDER,
    streamer: Callable[[torch.Tensor], None] | None = None,
    warmup: bool = True,
    repeats: int = 1,
    prefill_chunk: int | None = None,
    **sampling,
) -> list[CompareResult]:
    """Generate with every method from the same seed; time each (prefill included).

    Each method runs ``repeats`` times, the methods taking turns so that a burst of load from
    other processes hits them alike; its time is the fastest run. ``streamer`` is given to the
    very first run only. With ``warmup``, every method first generates a few untimed tokens so
    one-off costs (allocator, kernel selection) are not timed. A repeat whose tokens differ from
    the method's first run is returned as an extra result named ``"<method> (repeat r)"``, for
    :func:`mismatch` to report. ``prefill_chunk`` goes to every run (see
    :func:`futurefill.generate`).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup:
        for method in methods:
            generate_with(
                model,
                prompt_ids,
                min(4, max_new_tokens),
                method,
                seed,
                sampling,
                prefill_chunk=prefill_chunk,
            )
    best: dict[str, CompareResult] = {}
    odd: list[CompareResult] = []
    for r in range(repeats):
        for i, method in enumerate(methods):
            start = time.perf_counter()
            tokens = generate_with(
                model,
                prompt_ids,
                max_new_tokens,
                method,
                seed,
                sampling,
                streamer=streamer if r == 0 and i == 0 else None,
                prefill_chunk=prefill_chunk,
            )
            seconds = time.perf_counter() - start
            first = best.get(method)
            if first is None:
                best[method] = CompareResult(method, tokens, seconds)
            elif not torch.equal(first.tokens, tokens):
                odd.append(CompareResult(f"{method} (repeat {r + 1})", tokens, seconds))
            else:
                first.seconds = min(first.seconds, seconds)
    return [best[method] for method in methods] + odd


def mismatch(results: list[CompareResult]) -> str | None:
    """A message describing the first disagreement between the runs, or None if all agree."""
    reference = results[0]
    for other in results[1:]:
        if torch.equal(reference.tokens, other.tokens):
            continue
        if reference.tokens.shape != other.tokens.shape:
            return (
                f"{other.method} produced shape {tuple(other.tokens.shape)}, "
                f"{reference.method} {tuple(reference.tokens.shape)}"
            )
        diff = (reference.tokens != other.tokens).nonzero()
        batch, pos = (int(v) for v in diff[0])
        return (
            f"{other.method} differs from {reference.method} at generated token {pos} "
            f"(sequence {batch}): {int(other.tokens[batch, pos])} != "
            f"{int(reference.tokens[batch, pos])}"
        )
    return None


def format_table(results: list[CompareResult]) -> str:
    """The timing table: method, tokens, seconds, tokens/s, speedup vs naive."""
    base = next((r.seconds for r in results if r.method == "naive"), results[0].seconds)
    lines = [f"{'method':<12}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'speedup vs naive':>18}"]
    for r in results:
        speedup = base / r.seconds if r.seconds > 0 else float("inf")
        lines.append(
            f"{r.method:<12}{r.tokens.numel():>8d}{r.seconds:>10.3f}{r.tokens_per_s:>11.1f}"
            f"{speedup:>17.2f}x"
        )
    return "\n".join(lines)
