"""An OpenAI-compatible completions server over a :class:`~futurefill.serving.Scheduler`.

Endpoints: ``POST /v1/completions`` (text or token-id prompt, ``max_tokens``, ``temperature``,
``top_p``, ``top_k``, ``seed``, ``stop``, ``stream`` as server-sent events, ``n`` = 1),
``GET /v1/models``, ``GET /health`` and ``GET /metrics`` (Prometheus text format). A bad request
gets a 400 (404 for an unknown model) with ``{"error": {"message", "type", "param", "code"}}``
naming the field; a full queue a 429 with ``Retry-After``; a server shutting down a 503. A client
that goes away cancels its request, whose row is free at the scheduler's next iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from futurefill.serving.metrics import Metrics
from futurefill.serving.requests import QueueFull, Sampling
from futurefill.serving.requests import Request as CompletionRequest
from futurefill.serving.scheduler import Handle, Scheduler

__all__ = ["ApiError", "create_app", "parse_completion"]

# Fields of the OpenAI completions API this server accepts only at their neutral value.
NEUTRAL = {
    "echo": (False, None),
    "logprobs": (None,),
    "best_of": (1, None),
    "suffix": (None,),
    "presence_penalty": (0, 0.0, None),
    "frequency_penalty": (0, 0.0, None),
    "logit_bias": (None,),
    "user": None,  # any string: ignored
    "stream_options": None,  # accepted, ignored
}
FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop"}
FIELDS |= {"stream", "n", *NEUTRAL}


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a message, the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": None}
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


def _integer(body: dict, name: str, default: int | None, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ApiError(400, f"{name} must be an integer >= {low}, got {json.dumps(value)}", name)
    return value


def parse_completion(body: Any, model_name: str, tokenizer) -> tuple[CompletionRequest, bool]:
    """The scheduler request and ``stream`` flag of a completions request body, or ApiError."""
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
    if body.get("n", 1) != 1:
        raise ApiError(400, "n must be 1 (one completion per request)", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "prompt must not be empty", "prompt")
        if tokenizer is None:
            raise ApiError(400, "this model's tokenizer is not bundled: send token ids", "prompt")
        try:
            ids = tokenizer.encode(prompt)
        except ValueError as exc:
            raise ApiError(400, f"prompt: {exc}", "prompt") from None
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)
    ):
        ids = list(prompt)
    else:
        raise ApiError(
            400, "prompt must be a non-empty string or list of token ids (one prompt)", "prompt"
        )
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stop, list)
        or len(stop) > 4
        or not all(isinstance(s, str) and s for s in stop)
    ):
        raise ApiError(400, "stop must be a non-empty string or a list of up to 4 of them", "stop")
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
    request = CompletionRequest(
        prompt_ids=ids,
        max_tokens=_integer(body, "max_tokens", 16, 1),
        sampling=sampling,
        stop=stop,
        allowed_token_ids=getattr(tokenizer, "allowed_token_ids", None),
    )
    return request, stream


def create_app(
    scheduler: Scheduler,
    *,
    model_name: str,
    tokenizer,
    metrics: Metrics | None = None,
    retry_after: int = 1,
) -> FastAPI:
    """The FastAPI app serving ``scheduler``'s model as ``model_name``. The scheduler is started
    with the app and stopped (what is left cancelled) when it shuts down."""
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

    @app.get("/health")
    async def health() -> JSONResponse:
        if scheduler.error is not None or scheduler.stopping:
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> dict:
        entry = {"id": model_name, "object": "model", "created": created, "owned_by": "futurefill"}
        return {"object": "list", "data": [entry]}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        metrics.queue_length.set(scheduler.queue_length)
        metrics.running.set(scheduler.running)
        metrics.slots.set(scheduler.slots)
        metrics.slot_bytes.set(scheduler.bytes_per_slot)
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def completions(http: Request):
        try:
            body = json.loads(await http.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return ApiError(400, f"the body is not valid JSON: {exc}").response()
        try:
            request, stream = parse_completion(body, model_name, tokenizer)
            scheduler.check(request)
        except ApiError as error:
            return error.response()
        except ValueError as exc:
            param = str(exc).split(":")[0]
            return ApiError(400, str(exc), param if param in FIELDS else None).response()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        request.on_event = lambda text, reason: loop.call_soon_threadsafe(
            events.put_nowait, (text, reason)
        )
        try:
            handle = scheduler.submit(request)
        except QueueFull as exc:
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
            return StreamingResponse(_events(handle, events, head), media_type="text/event-stream")
        text, reason = [], None
        try:
            while reason is None:
                try:
                    piece, reason = await asyncio.wait_for(events.get(), timeout=0.5)
                except TimeoutError:
                    if await http.is_disconnected():
                        handle.cancel()
                        return None
                    continue
                text.append(piece)
        except asyncio.CancelledError:
            handle.cancel()
            raise
        choice = {"text": "".join(text), "index": 0, "logprobs": None, "finish_reason": reason}
        return {**head, "choices": [choice], "usage": _usage(handle)}

    return app


def _usage(handle: Handle) -> dict:
    prompt, completion = len(handle.request.prompt_ids), len(handle.tokens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _events(handle: Handle, events: asyncio.Queue, head: dict) -> AsyncIterator[str]:
    """Server-sent events: new text as it comes, the finish reason last, then ``[DONE]``. A
    client that goes away (the generator closed or cancelled) cancels the request."""
    try:
        reason = None
        while reason is None:
            text, reason = await events.get()
            if text or reason is not None:
                choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}
                chunk = {**head, "choices": [choice]}
                if reason is not None:
                    chunk["usage"] = _usage(handle)
                yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if reason is None:
            handle.cancel()
