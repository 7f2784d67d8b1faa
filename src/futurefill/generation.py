"""Auto-regressive generation from any model whose time mixing is :mod:`futurefill.nn`.

The model's own ``forward`` does the work inside a decoding session (:func:`futurefill.decoding`):
the prompt goes in as one chunk (one parallel FFT pass that seeds every long convolution's online
engine) and each new token as a chunk of one position, so the long convolutions are never
recomputed, and the logits are those of the model's parallel forward pass, to rounding, whichever
engine ``method`` runs them.

Ragged batches (prompts of different lengths) come right-padded with ``prompt_lengths``. They are
prefilled in one parallel pass: each prompt is moved to end at the longest one's end, and the
positions before it are padding that the session keeps out of every convolution
(:meth:`~futurefill.nn.DecodingSession.padded`: every futurefill.nn module sees zeros there).
Convolutions are time invariant and are a model's only time mixing, so every sequence gets
exactly the outputs it would get alone, and all sequences generate from the first step on.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from futurefill.checks import check_int
from futurefill.model import check_token_ids
from futurefill.nn import DecodingSession, decoding, decoding_max_len
from futurefill.online import ENGINE_OPTIONS, engine_options_text

__all__ = ["COMPILED_METHODS", "GenerationOutput", "generate", "select_next_tokens"]

# Engines with a traced step (see futurefill.nn.DecodingSession.traced_steps).
COMPILED_METHODS = ("continuous", "epoched", "deamortized")
# A batch-1 token step is bound by reading the weights once per token. On CPU inductor's
# "decompose_mm_pass" turns each (1, k) @ (k, n) product into a fused multiply-and-sum kernel
# spread over the intra-op threads, where MKL's GEMV reads the weights on one core: a
# HyenaDNA-large-1m-shaped step (8 layers, width 256, 25 MB of weights) went from 3.85 ms to
# 1.40 ms on a 2-core x86 CPU (32 such products alone: 3.3 ms to 0.61 ms).
# (Asked for only where this torch's inductor has the pass's CPU case; others compile without.)
CPU_COMPILE_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}


class GenerationOutput(NamedTuple):
    """What :func:`generate` returns with ``return_logits=True``.

    tokens : LongTensor, shape (batch, max_new_tokens)
    logits : Tensor, shape (batch, max_new_tokens, vocab_size), ``logits[b, i]`` is what token
        ``i`` of sequence ``b`` was chosen from (before temperature and filtering); NaN after the
        sequence's end-of-sequence token.
    """

    tokens: torch.Tensor
    logits: torch.Tensor


def select_next_tokens(
    logits: torch.Tensor,
    *,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token of every sequence: ``(batch, vocab_size) -> (batch,)``.

    Greedy (``do_sample=False``): the argmax, the lowest id on ties. Sampling: from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits (ties with the
    k-th kept) and then to the smallest set of most likely tokens whose probability reaches
    ``top_p`` (nucleus); one ``torch.multinomial`` draw per sequence from ``generator``.
    """
    if not do_sample:
        return logits.argmax(dim=-1)
    scores = logits / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the more likely tokens
        drop_sorted = before >= top_p  # never drops the most likely token (before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    method: str = "continuous",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    prompt_lengths: Sequence[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    streamer: Any = None,
    return_logits: bool = False,
    compile: bool = False,
    **engine_options: int,
) -> torch.Tensor | GenerationOutput:
    """Generate ``max_new_tokens`` tokens after each prompt, decoding with online convolutions.

    Parameters
    ----------
    model : nn.Module
        Any module whose forward maps ids ``(batch, length)`` to logits
        ``(batch, length, vocab_size)`` (or to an object with ``.logits``, as Hugging Face models
        return) and whose time mixing is :mod:`futurefill.nn` (a :class:`~futurefill.ConvLM`, a
        loaded checkpoint, your own model).
    input_ids : LongTensor, shape (batch, width)
        Prompts, right-padded when their lengths differ (the padding is never read).
    max_new_tokens : int >= 0
        Tokens to generate per sequence; ``prompt length + max_new_tokens`` must not exceed
        the model's max length (its shortest filter) for the longest prompt.
    method : {"continuous", "epoched", "naive", "deamortized"}
        The online convolution engine of every layer; all give the same tokens.
    temperature : float >= 0
        Divides the logits before sampling; 0 means greedy.
    top_k : int >= 1, optional
        Sample among the k most likely tokens only.
    top_p : float in (0, 1], optional
        Nucleus sampling: among the most likely tokens holding probability ``top_p``.
    do_sample : bool, optional
        Sample (True) or take the argmax (False). Default: sample if any of ``top_k``, ``top_p``,
        ``generator`` is given or ``temperature`` is neither 0 nor 1, else greedy. With False,
        ``temperature``, ``top_k`` and ``top_p`` are errors (a ``generator`` is just unused).
    eos_token_id : int, optional
        A sequence that generates it stops: its later tokens are ``pad_token_id``. Generation
        ends early when every sequence has stopped (checked once per step: a device sync).
    pad_token_id : int, optional
        Filler after eos; defaults to ``eos_token_id``.
    prompt_lengths : sequence of int or 1-D integer tensor, shape (batch,), optional
        Length of each prompt in ``input_ids`` (each in ``[1, width]``); default: all ``width``.
        Each sequence gets exactly the tokens it would get generated alone (greedy; sampling
        draws depend on the batch).
    generator : torch.Generator, optional
        Source of randomness for sampling, on the model's device: same seed, same tokens.
    streamer : callable or object with ``put`` (and optionally ``end``), optional
        Called once per decoding step with a LongTensor (batch,): the new token of each sequence
        (``pad_token_id`` after its eos). Not called with the prompt; ``end()`` is called at the
        end.
    return_logits : bool
        Also return the logits each token was chosen from (see :class:`GenerationOutput`).
    compile : bool
        Run the per-token forward as one ``torch.compile`` graph (``method`` continuous,
        epoched or deamortized): every module's step is a fixed-shape function of the engine's
        index in its tile or epoch, and the host does what depends on the position (the FFT
        levels at a tile's end, batched across layers; the epoch refills; the deamortized
        jobs' scheduling and pacing) between graph calls. It is compiled once per model,
        method, batch size and dtype (kept across calls, whatever the prompt and generation
        lengths) and gives eager's tokens (greedy's argmax is in the graph); on CUDA with
        ``mode="reduce-overhead"`` (CUDA graphs).
    **engine_options
        ``epoch_len`` (epoched) or ``tile_len`` (continuous, deamortized).

    Returns
    -------
    LongTensor, shape (batch, max_new_tokens): the new tokens of each sequence (the ``i``-th new
    token of sequence ``b`` follows its own prompt), or a :class:`GenerationOutput`.

    Runs in ``torch.inference_mode`` (about 10% less per-token overhead than ``no_grad`` on a
    CPU); the returned tensors are ordinary ones. Cost: one parallel prefill of every prompt
    (ragged ones padded to the longest), then ``max_new_tokens - 1`` steps, each one call of
    ``model`` on one position per sequence.
    """
    for name in engine_options:
        if name not in ENGINE_OPTIONS:
            raise TypeError(
                f"generate() got an unexpected keyword argument {name!r}; its engine options are "
                f"{engine_options_text()}"
            )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    weight = next(model.parameters(), None)
    device = weight.device if weight is not None else getattr(input_ids, "device", None)
    ids = _check_input_ids(input_ids, device)
    batch, width = ids.shape
    max_new_tokens = check_int(max_new_tokens, "max_new_tokens", 0)
    lengths_list = _check_prompt_lengths(prompt_lengths, batch, width)
    lengths = torch.tensor(lengths_list, dtype=torch.long, device=device)
    in_prompt = torch.arange(width, device=device) < lengths[:, None]  # (batch, width)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    check_token_ids(ids[in_prompt], vocab or torch.iinfo(torch.long).max, "input_ids")
    p_min, p_max = min(lengths_list), max(lengths_list)
    max_len = decoding_max_len(model)
    if max_len is not None and p_max + max_new_tokens > max_len:
        raise ValueError(
            f"prompt length {p_max} + max_new_tokens {max_new_tokens} = "
            f"{p_max + max_new_tokens} exceeds the model's max_len {max_len}"
        )
    do_sample = _resolve_sampling(do_sample, temperature, top_k, top_p, generator, device)
    if eos_token_id is not None:
        eos_token_id = check_int(eos_token_id, "eos_token_id", 0)
        if vocab is not None and eos_token_id >= vocab:
            raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary [0, {vocab})")
        pad_token_id = eos_token_id if pad_token_id is None else pad_token_id
    if pad_token_id is not None:
        pad_token_id = check_int(pad_token_id, "pad_token_id", None)
    put, end = _streamer_calls(streamer)
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be a bool, got {compile!r}")
    if compile and method not in COMPILED_METHODS:
        raise ValueError(
            f"compile=True supports method in {COMPILED_METHODS}, got method={method!r}"
        )
    half = compile and {p.dtype for p in model.parameters()} & {torch.float16, torch.bfloat16}
    if half:
        raise ValueError(
            f"compile=True needs a float32 or float64 model (half precisions decode eagerly, "
            f"through float32), got {str(half.pop()).removeprefix('torch.')} parameters"
        )

    # Every prompt moved to end at position p_max (left padding, which the session keeps out of
    # every convolution): one parallel prefill, then every sequence generates at every step.
    start = p_max - lengths  # (batch,): where each prompt begins
    columns = torch.arange(p_max, device=device)
    valid = columns >= start[:, None]  # (batch, p_max)
    source = (columns - start[:, None]).clamp(0, width - 1)
    prompt = torch.where(valid, ids.gather(1, source), 0)
    if max_new_tokens == 0:
        empty = ids[:, :0]
        if not return_logits:
            return _ordinary(empty)
        logits = _last_logits(model(prompt[:, -1:]), batch)
        return _ordinary(GenerationOutput(empty, logits.new_empty(batch, 0, logits.shape[-1])))

    new_tokens = torch.empty(batch, max_new_tokens, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    total = p_max + max_new_tokens
    with contextlib.ExitStack() as stack:
        session = stack.enter_context(
            decoding(model, batch_size=batch, max_len=total - 1, method=method, **engine_options)
        )
        with session.padded(valid) if p_min < p_max else contextlib.nullcontext():
            logits = _last_logits(model(prompt), batch)  # (batch, vocab): the first new token's
        if compile:
            step = compiled_step(model, session, device)
            stack.enter_context(session.traced_steps())
        greedy_next = None  # the compiled step's argmax, when greedy
        all_logits = (
            logits.new_full((batch, max_new_tokens, logits.shape[-1]), float("nan"))
            if return_logits
            else None
        )
        for i in range(max_new_tokens):
            if all_logits is not None:
                all_logits[:, i].copy_(logits)
            chosen = greedy_next
            if chosen is None:
                chosen = select_next_tokens(
                    logits,
                    do_sample=do_sample,
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    generator=generator,
                )
            kept = chosen
            if eos_token_id is not None:
                kept = torch.where(finished, pad_token_id, chosen)
                finished |= chosen == eos_token_id
            new_tokens[:, i].copy_(kept)
            if put is not None:
                put(kept)
            if i == max_new_tokens - 1:
                break
            if eos_token_id is not None and bool(finished.all()):
                new_tokens[:, i + 1 :] = pad_token_id
                break
            if compile:
                logits, greedy_next = step(chosen[:, None])
                session.advance()
                if do_sample:
                    greedy_next = None
            else:
                logits = _last_logits(model(chosen[:, None]), batch)
    if end is not None:
        end()
    if all_logits is None:
        return _ordinary(new_tokens)
    if eos_token_id is not None:
        is_eos = new_tokens == eos_token_id
        after_eos = (torch.cumsum(is_eos, dim=1) - is_eos.long()) > 0
        all_logits.masked_fill_(after_eos.unsqueeze(-1), float("nan"))
    return _ordinary(GenerationOutput(new_tokens, all_logits))


def compiled_step(
    model: nn.Module, session: DecodingSession, device: torch.device
) -> Callable[[torch.Tensor], Any]:
    """The compiled token step of ``model`` decoding in ``session`` on ``device``: ids
    ``(batch, 1)`` to the last logits ``(batch, vocab)`` and their argmax ``(batch,)``.

    One per model and (engine method and options, batch size, dtype, device), kept on the model,
    each a function with a code object of its own: dynamo keeps graphs, and counts them against
    its recompile limit (8), per code object, and runs every call past the limit eagerly (one
    function for every step would reach it with the eighth such combination in a process)."""
    dtype = getattr(next(model.parameters(), None), "dtype", None)
    options = tuple(sorted(session.engine_options.items()))
    key = (session.method, options, session.batch_size, dtype, torch.device(device))
    steps = model.__dict__.setdefault("_futurefill_compiled_steps", {})  # not a state-dict key
    if key not in steps:

        def token_step(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = _last_logits(model(ids), ids.shape[0])
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


# ---------------------------------------------------------------------- argument checks


def _ordinary(result: Any) -> Any:
    """Copies of inference-mode tensors (one or a tuple) that autograd and in-place ops accept."""
    with torch.inference_mode(False):
        if isinstance(result, torch.Tensor):
            return result.clone()
        return type(result)(*(t.clone() for t in result))


def _last_logits(output: Any, batch: int) -> torch.Tensor:
    """The last position's logits ``(batch, vocab)`` of a model's output ``(batch, n, vocab)``
    (a tensor, or an object with ``.logits``)."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(
            "generate needs a model whose forward returns logits (batch, length, vocab_size), or "
            f"an object with .logits; got {shape}"
        )
    return logits[:, -1]


def _check_input_ids(input_ids: Any, device: torch.device) -> torch.Tensor:
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


def _check_prompt_lengths(
    prompt_lengths: Sequence[int] | torch.Tensor | None, batch: int, width: int
) -> list[int]:
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


def _resolve_sampling(
    do_sample: bool | None,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> bool:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None:
        check_int(top_k, "top_k", 1)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise TypeError(f"top_p must be a float, got {type(top_p).__name__}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device}, the model on {device}")
    # Options that change the distribution; with do_sample=False they would be silently ignored.
    shaping = top_k is not None or top_p is not None or temperature not in (0, 1)
    if do_sample is None:
        return (shaping or generator is not None) and temperature != 0
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool or None, got {type(do_sample).__name__}")
    if do_sample and temperature == 0:
        raise ValueError("do_sample=True needs temperature > 0 (temperature 0 means greedy)")
    if not do_sample and shaping and temperature != 0:
        raise ValueError(
            "sampling options (temperature, top_k, top_p) given with do_sample=False; "
            "drop them or set do_sample=True"
        )
    return do_sample


def _streamer_calls(streamer: Any) -> tuple[Callable | None, Callable | None]:
    """``(put, end)`` for a streamer object with ``put`` (and ``end``), or a plain callable."""
    if streamer is None:
        return None, None
    if hasattr(streamer, "put"):
        return streamer.put, getattr(streamer, "end", None)
    if callable(streamer):
        return streamer, None
    raise TypeError(
        f"streamer must be callable or have a put method, got {type(streamer).__name__}"
    )
