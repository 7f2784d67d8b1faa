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
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from futurefill.pretrained.tokenizers import decode
from futurefill.serving.api import (
    ApiError,
    accept,
    check_model,
    chunk_body,
    completion_body,
    completion_head,
    submit,
    usage,
)
from futurefill.serving.metrics import Metrics
from futurefill.serving.requests import Collector, Event, QueueFull
from futurefill.serving.scheduler import Handle, Scheduler

__all__ = ["GUARDED", "create_app", "error_response"]

#: Routes outside /v1 that an API key guards too (/health and /metrics stay open).
GUARDED = frozenset({"/tokenizer_info", "/tokenize", "/detokenize"})


def error_response(error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    """``error`` as HTTP: its status, OpenAI's error object."""
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


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
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}"))

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def authorize(http: Request, call_next):
            path, root = http.url.path, http.scope.get("root_path", "")
            if root and (path == root or path.startswith(root + "/")):
                path = path[len(root) :]  # mounted under a prefix (Ray Serve's route_prefix)
            if path.startswith("/v1/") or path in GUARDED:
                given = http.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):  # constant time
                    message = "invalid or missing API key: send Authorization: Bearer <key>"
                    error = ApiError(401, message, code="invalid_api_key")
                    return error_response(error, {"WWW-Authenticate": "Bearer"})
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
            return error_response(error)
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
            if not isinstance(body.get("add_special_tokens", False), bool):
                message = "add_special_tokens must be true or false"
                raise ApiError(400, message, "add_special_tokens")
            check_model(body, model_name, required=False)
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise ApiError(400, "prompt must be a string", "prompt")
            try:
                ids = bundled_tokenizer().encode(prompt)
            except ValueError as exc:
                raise ApiError(400, f"prompt: {exc}", "prompt") from None
        except ApiError as error:
            return error_response(error)
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": scheduler.max_len})

    @app.post("/detokenize")
    async def detokenize(http: Request) -> JSONResponse:
        try:
            body = await _json_object(http, {"model", "tokens"})
            check_model(body, model_name, required=False)
            tokens = body.get("tokens")
            if (
                not isinstance(tokens, list)
                or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens)
                or not all(0 <= t < scheduler.vocab_size for t in tokens)
            ):
                raise ApiError(
                    400,
                    f"tokens must be a list of token ids in [0, {scheduler.vocab_size})",
                    "tokens",
                )
            text = decode(bundled_tokenizer(), tokens)
        except ApiError as error:
            return error_response(error)
        return JSONResponse({"prompt": text})

    @app.post("/v1/completions")
    async def completions(http: Request):
        try:
            body = await _json_object(http, None)
            requests, stream = accept(scheduler, body, model_name, tokenizer)
        except ApiError as error:
            return error_response(error)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        for p, request in enumerate(requests):
            request.on_event = functools.partial(_post, loop, events, p)
        try:
            handles = submit(scheduler, requests)
        except QueueFull as exc:
            status = 503 if scheduler.stopping else 429
            headers = {"Retry-After": str(retry_after)}
            return error_response(ApiError(status, f"overloaded: {exc}; retry later"), headers)
        head = completion_head(model_name)
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
        return completion_body(head, handles, collectors)

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
            chunk = chunk_body(head, handles, p, event)
            if ended == samples:
                chunk["usage"] = usage(handles)
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if ended < samples:
            _cancel(handles)
