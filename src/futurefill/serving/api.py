"""The OpenAI completions API (the legacy ``/v1/completions``), apart from HTTP: a request body
checked and turned into scheduler requests (:func:`accept`), submitted all or none
(:func:`submit`), and the response built from their events (:func:`completion_body`,
:func:`chunk_body`). The HTTP server (:mod:`futurefill.serving.server`) and offline batches
(:mod:`futurefill.serving.batch`) share it, so a line of a batch file gets exactly what the
server answers its body.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

from futurefill.serving.requests import MAX_LOGPROBS, Collector, Event, Sampling
from futurefill.serving.requests import Request as CompletionRequest
from futurefill.serving.scheduler import Handle, Scheduler

__all__ = [
    "FIELDS",
    "ApiError",
    "accept",
    "check_model",
    "chunk_body",
    "completion_body",
    "completion_head",
    "parse_completion",
    "submit",
    "usage",
]

# Fields of the OpenAI completions API this server accepts only at their neutral value.
NEUTRAL = {
    "suffix": (None,),
    "presence_penalty": (0, 0.0, None),
    "frequency_penalty": (0, 0.0, None),
    "logit_bias": (None,),
    "user": None,  # any string: ignored
    "stream_options": None,  # accepted, ignored
}
# Stop strings a request may give: OpenAI's limit is 4, but evaluation clients send a task's
# own list plus the end-of-sequence token (vLLM takes any number).
MAX_STOPS = 32
FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop"}
FIELDS |= {"stream", "n", "best_of", "logprobs", "echo", *NEUTRAL}


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a message, the field at fault."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return {"error": error}


def _number(body: dict, name: str, default: float, low: float, high: float, low_open=False):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a number, got {json.dumps(value)}", name)
    if value < low or value > high or (low_open and value == low):
        bound = "(" if low_open else "["
        raise ApiError(400, f"{name} must be in {bound}{low}, {high}], got {value}", name)
    return value


def _integer(body: dict, name: str, default: int | None, low: int, high: int | None = None):
    value = body.get(name)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ApiError(400, f"{name} must be an integer {bound}, got {json.dumps(value)}", name)
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, got {json.dumps(value)}", name)
    return value


def _token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    )


def _prompts(body: dict, tokenizer) -> list[list[int]]:
    """The prompts of a body as token ids: a string, a list of token ids, or a non-empty list
    of either (all of one kind)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) or _token_ids(prompt):
        prompt = [prompt]
    elif not isinstance(prompt, list) or not prompt:
        raise ApiError(
            400,
            "prompt must be a non-empty string, a list of token ids, or a non-empty list of either",
            "prompt",
        )
    if all(isinstance(p, str) for p in prompt):
        if tokenizer is None:
            raise ApiError(400, "this model's tokenizer is not bundled: send token ids", "prompt")
        if not all(prompt):
            raise ApiError(400, "prompt must not be empty", "prompt")
        try:
            return [tokenizer.encode(p) for p in prompt]
        except ValueError as exc:
            raise ApiError(400, f"prompt: {exc}", "prompt") from None
    if all(_token_ids(p) for p in prompt):
        return [list(p) for p in prompt]
    raise ApiError(
        400,
        "prompt: a list of prompts must hold only strings or only non-empty lists of token ids",
        "prompt",
    )


def parse_completion(body: Any, model_name: str, tokenizer) -> tuple[list[CompletionRequest], bool]:
    """The scheduler requests (one per prompt, in order) and ``stream`` flag of a completions
    request body, or ApiError naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r} (not supported here)", unknown[0])
    for name, accepted in NEUTRAL.items():
        if accepted is not None and body.get(name) not in accepted:
            raise ApiError(400, f"{name}={json.dumps(body[name])} is not supported", name)
    check_model(body, model_name)
    stream = _flag(body, "stream")
    n = _integer(body, "n", 1, 1)
    best_of = _integer(body, "best_of", None, 1)
    if best_of is not None and best_of < n:
        raise ApiError(400, f"best_of must be >= n ({n}), got {best_of}", "best_of")
    if stream and best_of is not None and best_of > n:
        raise ApiError(
            400, "best_of > n cannot be streamed (the best are known at the end)", "best_of"
        )
    logprobs = _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
    echo = _flag(body, "echo")
    prompts = _prompts(body, tokenizer)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stop, list)
        or len(stop) > MAX_STOPS
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise ApiError(
            400, f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them", "stop"
        )
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    top_k = body.get("top_k")
    top_k = None if top_k in (None, -1) else _integer(body, "top_k", None, 1)
    seed = _integer(body, "seed", None, 0)
    if seed is not None and seed >= 2**63:
        raise ApiError(400, f"seed must be below 2**63, got {seed}", "seed")
    sampling = Sampling(
        temperature=temperature, top_k=top_k, top_p=None if top_p == 1 else top_p, seed=seed
    )
    max_tokens = _integer(body, "max_tokens", 16, 0)
    requests = [
        CompletionRequest(
            prompt_ids=ids,
            max_tokens=max_tokens,
            sampling=sampling,
            stop=stop,
            allowed_token_ids=getattr(tokenizer, "allowed_token_ids", None),
            n=n,
            best_of=best_of,
            logprobs=logprobs,
            echo=echo,
        )
        for ids in prompts
    ]
    return requests, stream


def check_model(body: dict, model_name: str, required: bool = True) -> None:
    """ApiError unless ``body`` names ``model_name`` (404 for another model)."""
    if "model" not in body:
        if required:
            raise ApiError(400, "model is required", "model")
        return
    if body["model"] != model_name:
        raise ApiError(404, f"the model {body['model']!r} does not exist", "model")


def accept(
    scheduler: Scheduler, body: Any, model_name: str, tokenizer
) -> tuple[list[CompletionRequest], bool]:
    """:func:`parse_completion`, then every request checked against ``scheduler`` (a prompt
    over the context, samples over the slots): ApiError naming the field, nothing queued."""
    requests, stream = parse_completion(body, model_name, tokenizer)
    if len(requests) > scheduler.queue_size:
        message = (
            f"prompt: {len(requests)} prompts exceed the {scheduler.queue_size} requests the "
            "server's queue holds"
        )
        raise ApiError(400, message, "prompt")
    for request in requests:
        try:
            scheduler.check(request)
        except ValueError as exc:
            param = str(exc).split(":")[0]
            raise ApiError(400, str(exc), param if param in FIELDS else None) from None
    return requests, stream


def submit(scheduler: Scheduler, requests: list[CompletionRequest]) -> list[Handle]:
    """Every request submitted at once, or none: QueueFull when the queue has no room for all
    now."""
    return scheduler.submit_all(requests)


def completion_head(model_name: str) -> dict:
    """The fields every response (and streamed chunk) of one request shares."""
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_name,
    }


def completion_body(head: dict, handles: list[Handle], collectors: list[Collector]) -> dict:
    """The response of a request whose prompts' events are all in ``collectors``: choice
    ``p * n + i`` is sample ``i`` of prompt ``p`` (the best ``n`` of ``best_of``)."""
    choices = []
    for p, (collector, handle) in enumerate(zip(collectors, handles, strict=True)):
        n = handle.request.n
        for completion in collector.completions(handle.sample_tokens, n):
            logprobs = completion.logprobs
            choices.append(
                {
                    "text": completion.text,
                    "index": p * n + completion.index,
                    "logprobs": None if logprobs is None else logprobs.as_dict(),
                    "finish_reason": completion.finish_reason,
                }
            )
    return {**head, "choices": choices, "usage": usage(handles)}


def chunk_body(head: dict, handles: list[Handle], prompt: int, event: Event) -> dict:
    """A streamed chunk: one event of prompt ``prompt``'s request, under its choice's index."""
    logprobs = None if event.logprobs is None else event.logprobs.as_dict()
    choice = {
        "text": event.text,
        "index": prompt * handles[prompt].request.n + event.index,
        "logprobs": logprobs,
        "finish_reason": event.finish_reason,
    }
    return {**head, "choices": [choice]}


def usage(handles: list[Handle]) -> dict:
    """Tokens of the prompts (each once, whatever its samples) and of every generated sample
    (``best_of`` ones too: they were computed)."""
    prompt = sum(len(handle.request.prompt_ids) for handle in handles)
    completion = sum(handle.generated for handle in handles)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
