"""Auto-regressive generation from any model whose time mixing is :mod:`futurefill.nn`.

:func:`generate` is a short loop over a :class:`~futurefill.decoder.Decoder` with independent
rows: prefill every prompt in its own row (one parallel pass each, whatever the lengths: no
padding, every row at its own position), then choose a token per sequence (greedy or sampled),
stop at end-of-sequence (the row leaves the batch), stream, record logits, and feed the tokens
back, one decoder step per token. The logits are those of the model's parallel forward pass, to
rounding, whichever engine ``method`` runs the long convolutions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from futurefill.checks import check_int
from futurefill.decoder import Decoder, check_input_ids, check_prompt_lengths
from futurefill.nn import decoding_max_len
from futurefill.online import engine_options, engine_options_text

__all__ = ["GenerationOutput", "banned_tokens", "generate", "select_next_tokens"]


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
    do_sample: bool = False,
    suppress_token_ids: Sequence[int] | None = None,
    allowed_token_ids: Sequence[int] | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    prompt_lengths: Sequence[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    streamer: Any = None,
    return_logits: bool = False,
    compile: bool = False,
    prefill_chunk: int | None = None,
    num_return_sequences: int = 1,
    **options: int,
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
    method : str
        The online convolution engine of every layer (:data:`futurefill.online.ENGINES`;
        ``"modal"`` for models whose long filters declare a modal form). In float32 and
        float64 all give the same logits to rounding; in float16 and bfloat16 each layer's
        output is rounded to the half dtype, so methods may choose different tokens where two
        logits tie at that precision (docs/algorithms.md, "Exactness").
    do_sample : bool
        Sample (True) or take the argmax (False, the default): Hugging Face's convention.
        ``temperature``, ``top_k`` and ``top_p`` shape sampling only, so with ``do_sample=False``
        they are errors, not silently ignored (``temperature=0`` is greedy either way).
    temperature : float >= 0
        Divides the logits before sampling (default 1.0).
    top_k : int >= 1, optional
        Sample among the k most likely tokens only.
    top_p : float in (0, 1], optional
        Nucleus sampling: among the most likely tokens holding probability ``top_p``.
    suppress_token_ids, allowed_token_ids : sequences of int, optional
        Tokens never chosen, or the only tokens ever chosen (greedy and sampling alike): a DNA
        model's special tokens, say. At least one token must stay allowed.
    eos_token_id : int, optional
        A sequence that generates it stops and leaves the batch: its later tokens are
        ``pad_token_id``. Generation ends early when every sequence has stopped (checked once
        per step: a device sync).
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
        Run the per-token forward as one ``torch.compile`` graph (every method; float32 or
        float64), compiled once per model, method, batch size and dtype whatever the lengths;
        gives eager's tokens (see :class:`~futurefill.decoder.Decoder`).
    prefill_chunk : int, optional
        Prefill each prompt in pieces of at most this many tokens (memory bounded by the piece,
        the tokens the same); default one pass per prompt.
    num_return_sequences : int >= 1
        Sequences generated per prompt (Hugging Face's name): each prompt is prefilled once and
        its row forked (:meth:`~futurefill.decoder.Decoder.fork`) into the others, which then
        sample on their own; output rows ``b * n .. b * n + n - 1`` are prompt ``b``'s. Every
        row gets exactly what it would get with its prompt repeated ``n`` times in
        ``input_ids`` (the same draws from ``generator``), for one prefill instead of ``n``.
    **options
        The method's knobs: ``epoch_len`` (epoched), ``tile_len`` (continuous, deamortized).

    Returns
    -------
    LongTensor, shape (batch * num_return_sequences, max_new_tokens): the new tokens of each
    sequence (the ``i``-th new token of sequence ``b`` follows its own prompt), or a
    :class:`GenerationOutput`.

    Runs in ``torch.inference_mode``; the returned tensors are ordinary ones. Cost: one parallel
    prefill per prompt, then ``max_new_tokens - 1`` steps, each one call of ``model`` on one
    position per sequence still generating.
    """
    for name in options:
        if name not in engine_options():
            raise TypeError(
                f"generate() got an unexpected keyword argument {name!r}; its engine options are "
                f"{engine_options_text()}"
            )
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    weight = next(model.parameters(), None)
    device = weight.device if weight is not None else getattr(input_ids, "device", None)
    ids = check_input_ids(input_ids, device)
    prompts, width = ids.shape
    max_new_tokens = check_int(max_new_tokens, "max_new_tokens", 0)
    lengths = check_prompt_lengths(prompt_lengths, prompts, width)
    samples = check_int(num_return_sequences, "num_return_sequences")
    limit = decoding_max_len(model)
    if limit is not None and max(lengths) + max_new_tokens > limit:
        raise ValueError(
            f"prompt length {max(lengths)} + max_new_tokens {max_new_tokens} = "
            f"{max(lengths) + max_new_tokens} exceeds the model's max_len {limit}"
        )
    _check_sampling(do_sample, temperature, top_k, top_p, generator, device)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    banned = banned_tokens(suppress_token_ids, allowed_token_ids, vocab, device)
    sample = functools.partial(
        select_next_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
    )
    eos_token_id, pad_token_id = _check_eos(eos_token_id, pad_token_id, vocab)
    put, end = _streamer_calls(streamer)

    # Every prompt prefilled alone in its row (forked into its samples' rows), the rows at their
    # own positions (no padding), a row that ends leaving the batch. The last token is never fed
    # back: a row holds its prompt and max_new_tokens - 1 more.
    max_len = max(lengths) + max(max_new_tokens - 1, 0)
    options.update(method=method, compile=compile, prefill_chunk=prefill_chunk)
    batch = prompts * samples
    lengths = [length for length in lengths for _ in range(samples)]  # of every output row
    rows = list(range(batch))
    live, at = rows, torch.arange(batch, device=device)  # the rows still generating
    nonfinite = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
    fill = pad_token_id if pad_token_id is not None else 0
    new_tokens = torch.full((batch, max_new_tokens), fill, dtype=torch.long, device=device)
    table = None
    with Decoder(model, batch_size=batch, max_len=max_len, **options) as dec:
        starts = []
        for prompt in range(prompts):  # each alone, once
            first = prompt * samples
            starts.append(dec.start(first, ids[prompt, : lengths[first]]))
            if samples > 1:
                dec.fork(first, range(first + 1, first + samples))
        logits, greedy = (
            torch.cat(parts).repeat_interleave(samples, 0) for parts in zip(*starts, strict=True)
        )
        for i in range(max_new_tokens):
            if i == 0 or put is not None:  # before any token is out: one host sync
                _check_finite(logits, i, lengths, live)
            else:  # the first step each row went wrong, checked at the end (no sync)
                bad = ~torch.isfinite(logits).all(dim=-1)
                nonfinite[at] = torch.where(bad & (nonfinite[at] > i), i, nonfinite[at])
            if return_logits:
                if table is None:
                    table = logits.new_full((batch, max_new_tokens, logits.shape[-1]), torch.nan)
                table[at, i] = logits
            if banned is not None:
                logits = logits.masked_fill(banned, -torch.inf)
                greedy = logits.argmax(dim=-1)
            chosen = sample(logits) if do_sample else greedy
            new_tokens[at, i] = chosen
            if put is not None:
                put(new_tokens[:, i])
            if i == max_new_tokens - 1:
                break
            if eos_token_id is not None:  # rows that end leave the batch (a host sync)
                going = (chosen != eos_token_id).tolist()
                live = [row for row, keep in zip(live, going, strict=True) if keep]
                if not live:
                    break
                keep = torch.tensor(going, device=device)
                at, chosen = at[keep], chosen[keep]
            logits, greedy = dec.step(chosen, live)
    if end is not None:
        end()
    if bool((nonfinite < max_new_tokens).any()):
        step = int(nonfinite.min())
        raise _nonfinite(int((nonfinite == step).nonzero()[0]), step, lengths)
    if not return_logits:
        return _ordinary(new_tokens)
    if table is None:  # no token asked for
        table = logits.new_empty(batch, 0, logits.shape[-1])
    return _ordinary(GenerationOutput(new_tokens, table))


def _check_eos(
    eos_token_id: int | None, pad_token_id: int | None, vocab: int | None
) -> tuple[int | None, int | None]:
    """The checked ids; ``pad_token_id`` defaults to ``eos_token_id``."""
    if eos_token_id is not None:
        eos_token_id = check_int(eos_token_id, "eos_token_id", 0)
        if vocab is not None and eos_token_id >= vocab:
            raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary [0, {vocab})")
        pad_token_id = eos_token_id if pad_token_id is None else pad_token_id
    if pad_token_id is not None:
        pad_token_id = check_int(pad_token_id, "pad_token_id", None)
    return eos_token_id, pad_token_id


def _check_finite(logits: torch.Tensor, step: int, lengths: list[int], rows: list[int]) -> None:
    """ValueError unless every logit ``(len(rows), vocab)`` of generated token ``step`` is
    finite, naming the first sequence and its position."""
    bad = ~torch.isfinite(logits).all(dim=-1)
    if bool(bad.any()):
        raise _nonfinite(rows[int(bad.nonzero()[0])], step, lengths)


def _nonfinite(row: int, step: int, lengths: list[int]) -> ValueError:
    return ValueError(
        f"the model's logits are not finite (NaN or inf) for sequence {row} at generated token "
        f"{step} (position {lengths[row] - 1 + step}): check the model's weights and dtype"
    )


def _ordinary(result: Any) -> Any:
    """Copies of inference-mode tensors (one or a tuple) that autograd and in-place ops accept."""
    with torch.inference_mode(False):
        if isinstance(result, torch.Tensor):
            return result.clone()
        return type(result)(*(t.clone() for t in result))


def _check_sampling(
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> None:
    if not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be a bool, got {type(do_sample).__name__}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if do_sample and temperature == 0:
        raise ValueError("do_sample=True needs temperature > 0 (temperature 0 means greedy)")
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
    # Options that shape sampling; with do_sample=False they would be silently ignored.
    shaping = [
        name
        for name, given in (
            ("temperature", temperature not in (0, 1)),
            ("top_k", top_k is not None),
            ("top_p", top_p is not None),
        )
        if given
    ]
    if shaping and not do_sample and temperature != 0:
        raise ValueError(
            f"{', '.join(shaping)} shape sampling, which needs do_sample=True (generate is greedy "
            "by default)"
        )


def banned_tokens(
    suppress: Sequence[int] | None,
    allowed: Sequence[int] | None,
    vocab: int | None,
    device: torch.device,
) -> torch.Tensor | None:
    """``(vocab,)`` bool, True for the tokens never chosen; None when every token may be."""
    if suppress is None and allowed is None:
        return None
    if vocab is None:
        raise ValueError(
            "suppress_token_ids and allowed_token_ids need the model's vocabulary size "
            "(model.config.vocab_size)"
        )
    banned = torch.zeros(vocab, dtype=torch.bool)
    for name, ids, ban in (
        ("suppress_token_ids", suppress, True),
        ("allowed_token_ids", allowed, False),
    ):
        if ids is None:
            continue
        ids = [check_int(i, name, 0) for i in ids]
        outside = [i for i in ids if i >= vocab]
        if outside:
            raise ValueError(f"{name} {outside} are outside the vocabulary [0, {vocab})")
        if ban:
            banned[ids] = True
        else:
            keep = torch.ones(vocab, dtype=torch.bool)
            keep[ids] = False
            banned |= keep
    if bool(banned.all()):
        raise ValueError("suppress_token_ids and allowed_token_ids leave no token to choose")
    return banned.to(device)


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
