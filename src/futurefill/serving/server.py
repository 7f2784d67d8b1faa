"""An OpenAI-compatible completions server over a :class:`~futurefill.serving.Scheduler`.

Endpoints: ``POST /v1/completions`` (the legacy completions API: a text or token-id prompt or a
list of them, ``max_tokens`` (0: the prompt alone), ``temperature``, ``top_p``, ``top_k``,
``seed``, ``stop``, ``n``, ``best_of``, ``logprobs``, ``echo``, ``stream`` as server-sent
events), ``GET /v1/models``, the tokenizer's ``GET /tokenizer_info``, ``POST /tokenize`` and
``POST /detokenize`` (vLLM's, which remote-tokenizer clients probe), ``GET /health`` and
``GET /metrics`` (Prometheus text format). Choices are ordered by prompt, then sample: choice
``p * n + i`` is sample ``i`` of prompt ``p``. A bad request gets a 400 (404 for an unknown
model) with ``{"error": {"message", "type", "param", "code"}}`` naming the field; a full queue
a 429 with ``Retry-After``; a server shutting down a 503. Nothing is queued unless every prompt
of a request is accepted. A client that goes away cancels its requests, whose rows are free at
the scheduler's next iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from futurefill.pretrained.tokenizers import decode
from futurefill.serving.metrics import Metrics
from futurefill.serving.requests import MAX_LOGPROBS, Collector, Event, QueueFull, Sampling
from futurefill.serving.requests import Request as CompletionRequest
from futurefill.serving.scheduler import Handle, Scheduler

__all__ = ["ApiError", "create_app", "parse_completion"]

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
#: Routes outside /v1 that an API key guards too (/health and /metrics stay open).
GUARDED = frozenset({"/tokenizer_info", "/tokenize", "/detokenize"})


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a message, the field at fault."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status, headers=headers)


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
    if "model" not in body:
        raise ApiError(400, "model is required", "model")
    if body["model"] != model_name:
        raise ApiError(404, f"the model {body['model']!r} does not exist", "model")
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


def create_app(
    scheduler: Scheduler,
    *,
    model_name: str,
    tokenizer,
    metrics: Metrics | None = None,
    retry_after: int = 1,
    api_key: str | None = None,
) -> FastAPI:
    """The FastAPI app serving ``scheduler``'s model as ``model_name``. The scheduler is started
    with the app and stopped (what is left cancelled) when it shuts down. With ``api_key`` the
    ``/v1`` and tokenizer routes answer only requests with ``Authorization: Bearer
    <api_key>`` (:data:`GUARDED`), others a 401 before anything runs."""
    metrics = metrics or scheduler.metrics or Metrics()
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not scheduler.started:
            scheduler.start()
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop)

    app = FastAPI(title="futurefill", lifespan=lifespan)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(exc).__name__}").response()

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def authorize(http: Request, call_next):
            path = http.url.path
            if path.startswith("/v1/") or path in GUARDED:
                given = http.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):  # constant time
                    message = "invalid or missing API key: send Authorization: Bearer <key>"
                    error = ApiError(401, message, code="invalid_api_key")
                    return error.response({"WWW-Authenticate": "Bearer"})
            return await call_next(http)

    @app.get("/health")
    async def health() -> JSONResponse:
        if scheduler.error is not None or scheduler.stopping:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> dict:
        entry = {
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "futurefill",
            "max_model_len": scheduler.max_len,
        }
        return {"object": "list", "data": [entry]}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        metrics.queue_length.set(scheduler.queue_length)
        metrics.running.set(scheduler.running)
        metrics.slots.set(scheduler.slots)
        metrics.slot_bytes.set(scheduler.bytes_per_slot)
        metrics.prefix_cache_bytes.set(scheduler.prefix_cache.nbytes)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def bundled_tokenizer():
        if tokenizer is None:
            raise ApiError(400, "this model's tokenizer is not bundled: send token ids")
        return tokenizer

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> JSONResponse:
        try:
            bundled = bundled_tokenizer()
        except ApiError as error:
            return error.response()
        return JSONResponse(
            {
                "tokenizer_class": type(bundled).__name__,
                "name": bundled.name,
                "vocab_size": bundled.vocab_size,
                "eos_token": bundled.eos_token,
                "eos_token_id": bundled.eos_token_id,
                "bos_token": None,
                "pad_token": None,
                "model_max_length": scheduler.max_len,
            }
        )

    @app.post("/tokenize")
    async def tokenize(http: Request) -> JSONResponse:
        try:
            body = await _json_object(http, {"model", "prompt", "add_special_tokens"})
            _check_model(body, model_name, required=False)
            _flag(body, "add_special_tokens")  # no special tokens are added either way
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise ApiError(400, "prompt must be a string", "prompt")
            try:
                ids = bundled_tokenizer().encode(prompt)
            except ValueError as exc:
                raise ApiError(400, f"prompt: {exc}", "prompt") from None
        except ApiError as error:
            return error.response()
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": scheduler.max_len})

    @app.post("/detokenize")
    async def detokenize(http: Request) -> JSONResponse:
        try:
            body = await _json_object(http, {"model", "tokens"})
            _check_model(body, model_name, required=False)
            tokens = body.get("tokens")
            if not (tokens == [] or _token_ids(tokens)) or not all(
                0 <= t < scheduler.vocab_size for t in tokens
            ):
                raise ApiError(
                    400,
                    f"tokens must be a list of token ids in [0, {scheduler.vocab_size})",
                    "tokens",
                )
            text = decode(bundled_tokenizer(), tokens)
        except ApiError as error:
            return error.response()
        return JSONResponse({"prompt": text})

    @app.post("/v1/completions")
    async def completions(http: Request):
        try:
            body = await _json_object(http, None)
            requests, stream = parse_completion(body, model_name, tokenizer)
            for request in requests:
                scheduler.check(request)
        except ApiError as error:
            return error.response()
        except ValueError as exc:
            param = str(exc).split(":")[0]
            return ApiError(400, str(exc), param if param in FIELDS else None).response()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        handles: list[Handle] = []
        for p, request in enumerate(requests):
            request.on_event = functools.partial(_post, loop, events, p)
            try:
                handles.append(scheduler.submit(request))
            except QueueFull as exc:
                for handle in handles:  # all of the request's prompts, or none
                    handle.cancel()
                status = 503 if scheduler.stopping else 429
                headers = {"Retry-After": str(retry_after)}
                return ApiError(status, f"overloaded: {exc}; retry later").response(headers)
        head = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
        }
        if stream:
            chunks = _chunks(handles, events, head)
            return StreamingResponse(chunks, media_type="text/event-stream")
        collectors = [Collector(r.samples, r.logprobs is not None) for r in requests]
        try:
            while not all(collector.done for collector in collectors):
                try:
                    p, event = await asyncio.wait_for(events.get(), timeout=0.5)
                except TimeoutError:
                    if await http.is_disconnected():
                        _cancel(handles)
                        return None
                    continue
                collectors[p].add(event)
        except asyncio.CancelledError:
            _cancel(handles)
            raise
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
        return {**head, "choices": choices, "usage": _usage(handles)}

    return app


def _post(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, prompt: int, event: Event):
    """An event of prompt ``prompt``'s request, from the engine thread to the response's loop."""
    loop.call_soon_threadsafe(events.put_nowait, (prompt, event))


def _cancel(handles: list[Handle]) -> None:
    for handle in handles:
        handle.cancel()


async def _json_object(http: Request, fields: set[str] | None) -> dict:
    """The body as a JSON object (with only ``fields``, where given), or ApiError."""
    try:
        body = json.loads(await http.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if fields is not None:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        unknown = sorted(set(body) - fields)
        if unknown:
            raise ApiError(400, f"unknown field {unknown[0]!r} (not supported here)", unknown[0])
    return body


def _check_model(body: dict, model_name: str, required: bool) -> None:
    if "model" not in body:
        if required:
            raise ApiError(400, "model is required", "model")
        return
    if body["model"] != model_name:
        raise ApiError(404, f"the model {body['model']!r} does not exist", "model")


def _usage(handles: list[Handle]) -> dict:
    """Tokens of the prompts (each once, whatever its samples) and of every generated sample
    (``best_of`` ones too: they were computed)."""
    prompt = sum(len(handle.request.prompt_ids) for handle in handles)
    completion = sum(handle.generated for handle in handles)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _chunks(handles: list[Handle], events: asyncio.Queue, head: dict) -> AsyncIterator[str]:
    """Server-sent events: each sample's new text (and log-probabilities) as it comes, with its
    choice's index, its finish reason last (the last one with the usage), then ``[DONE]``. A
    client that goes away (the generator closed or cancelled) cancels the requests."""
    ended = 0
    samples = sum(handle.request.samples for handle in handles)
    try:
        while ended < samples:
            p, event = await events.get()
            ended += event.finish_reason is not None
            if not (event.text or event.logprobs or event.finish_reason):
                continue
            logprobs = None if event.logprobs is None else event.logprobs.as_dict()
            choice = {
                "text": event.text,
                "index": p * handles[p].request.n + event.index,
                "logprobs": logprobs,
                "finish_reason": event.finish_reason,
            }
            chunk = {**head, "choices": [choice]}
            if ended == samples:
                chunk["usage"] = _usage(handles)
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if ended < samples:
            _cancel(handles)
