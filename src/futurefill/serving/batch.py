"""Offline batches in the OpenAI Batch file format (``futurefill batch IN.jsonl OUT.jsonl``).

Every input line is a request, ``{"custom_id", "method": "POST", "url": "/v1/completions",
"body"}``, whose body is what the server accepts (:mod:`futurefill.serving.api`); every output
line is its outcome, ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``: status 200 and the completion the server would answer, or the server's 4xx error
object and ``error`` saying why (a bad line does not stop the job). The lines run on a
:class:`~futurefill.serving.Scheduler` (continuous batching, chunked prefill, the prefix cache),
as many at once as its queue takes, and the output keeps the input's order: a line is written
once it and every line before it are done, and flushed, so a job that is stopped (Ctrl-C, a
killed process) has written a prefix of the input. Run again with the same output, it checks
that prefix against the input and goes on after it (:func:`resume_point`): every line ends up
in the output exactly once.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from futurefill.serving.api import ApiError, accept, completion_body, completion_head, submit
from futurefill.serving.requests import Collector, Event, QueueFull
from futurefill.serving.scheduler import Handle, Scheduler

__all__ = [
    "BatchError",
    "BatchLine",
    "BatchSummary",
    "output_line",
    "read_batch",
    "resume_point",
    "run_batch",
    "run_lines",
]

URL = "/v1/completions"


class BatchError(ValueError):
    """A batch that cannot run at all (an output that does not continue its input)."""


@dataclass(frozen=True)
class BatchLine:
    """An input line: its number (from 1), ``custom_id`` and ``body``, or the error that refuses
    it before it runs."""

    number: int
    custom_id: str | None
    body: dict | None = None
    error: ApiError | None = None


@dataclass
class BatchSummary:
    """What a run did: lines written (``errors`` of them failed), lines skipped as done before,
    tokens generated, seconds."""

    written: int = 0
    errors: int = 0
    skipped: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def read_batch(path: str | Path) -> list[BatchLine]:
    """The lines of a batch file (blank lines skipped), each checked: a JSON object with a
    non-empty string ``custom_id`` not used by an earlier line, ``method`` POST, ``url``
    /v1/completions and an object ``body``; a line that is not gets its error."""
    lines, seen = [], {}
    with open(path, encoding="utf-8") as source:
        for number, text in enumerate(source, start=1):
            if text.strip():
                line = _parse_line(number, text, seen)
                if line.error is None:
                    seen[line.custom_id] = number
                lines.append(line)
    return lines


def _parse_line(number: int, text: str, seen: dict[str, int]) -> BatchLine:
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        return BatchLine(number, None, error=ApiError(400, f"line {number} is not JSON: {exc}"))
    if not isinstance(item, dict):
        return BatchLine(number, None, error=ApiError(400, "a line must be a JSON object"))
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        error = ApiError(400, "custom_id must be a non-empty string", "custom_id")
        return BatchLine(number, None, error=error)
    if custom_id in seen:
        message = f"custom_id {custom_id!r} repeats line {seen[custom_id]}'s"
        return BatchLine(number, custom_id, error=ApiError(400, message, "custom_id"))
    unknown = sorted(set(item) - {"custom_id", "method", "url", "body"})
    checks = [
        (not unknown, f"unknown field {unknown[0]!r}" if unknown else "", "line"),
        (item.get("method") == "POST", "method must be POST", "method"),
        (item.get("url") == URL, f"url must be {URL}, got {item.get('url')!r}", "url"),
        (isinstance(item.get("body"), dict), "body must be a JSON object", "body"),
    ]
    for ok, message, param in checks:
        if not ok:
            return BatchLine(number, custom_id, error=ApiError(400, message, param))
    return BatchLine(number, custom_id, item["body"])


def output_line(line: BatchLine, status: int, body: dict) -> dict:
    """A line's outcome in the Batch output format."""
    error = None
    if status != 200:
        error = {"code": body["error"].get("code") or "invalid_request", **body["error"]}
    response = {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body}
    return {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": line.custom_id,
        "response": response,
        "error": error,
    }


def resume_point(lines: list[BatchLine], output: str | Path) -> int:
    """How many input lines ``output`` holds already (0 when it does not exist): the complete
    lines of a run on ``lines`` are a prefix of them, each naming its line's ``custom_id``; a
    last line cut short (a killed run) is removed. BatchError when ``output`` does not continue
    ``lines``."""
    path = Path(output)
    if not path.exists():
        return 0
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        with open(path, "r+b") as file:  # a line cut short: written again
            file.truncate(len(complete))
    written = complete.decode("utf-8").splitlines()
    if len(written) > len(lines):
        raise BatchError(f"{path} holds {len(written)} lines, more than the input's {len(lines)}")
    for number, (text, line) in enumerate(zip(written, lines, strict=False), start=1):
        try:
            custom_id = json.loads(text).get("custom_id")
        except (json.JSONDecodeError, AttributeError):
            raise BatchError(f"{path} line {number} is not a batch output line") from None
        if custom_id != line.custom_id:
            raise BatchError(
                f"{path} does not continue this input: its line {number} is custom_id "
                f"{custom_id!r}, the input's {line.custom_id!r}"
            )
    return len(written)


@dataclass(eq=False)
class _Running:
    """A line submitted to the scheduler: its handles and collectors, done when they are."""

    line: BatchLine
    head: dict
    handles: list[Handle] = field(default_factory=list)
    collectors: list[Collector] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return all(collector.done for collector in self.collectors)


def run_lines(
    scheduler: Scheduler,
    lines: list[BatchLine],
    *,
    model_name: str,
    tokenizer,
) -> Iterator[tuple[BatchLine, int, dict]]:
    """Each line's ``(line, status, body)`` in the input's order, the lines running on
    ``scheduler`` (started here if it is not) as many at once as its queue takes."""
    if not scheduler.started:
        scheduler.start()
    changed = threading.Condition()
    pending: collections.deque[tuple[BatchLine, _Running | tuple[int, dict]]] = collections.deque()

    def on_event(collector: Collector, event: Event) -> None:
        with changed:
            collector.add(event)
            changed.notify_all()

    def first_done() -> bool:
        outcome = pending[0][1]
        return not isinstance(outcome, _Running) or outcome.done

    def results(wait: bool) -> Iterator[tuple[BatchLine, int, dict]]:
        """The finished lines at the head of ``pending`` (waiting for the first if asked)."""
        while pending:
            with changed:
                if wait:
                    changed.wait_for(first_done)
                if not first_done():
                    return
            line, outcome = pending.popleft()
            if isinstance(outcome, _Running):
                outcome = 200, completion_body(outcome.head, outcome.handles, outcome.collectors)
            yield line, *outcome
            wait = False

    for line in lines:
        outcome = _start(scheduler, line, model_name, tokenizer, on_event)
        while outcome is None:  # the queue is full: the oldest line's end makes room
            if pending:
                yield from results(wait=True)
            else:  # (others' requests fill it: a server's clients)
                time.sleep(0.01)
            outcome = _start(scheduler, line, model_name, tokenizer, on_event)
        pending.append((line, outcome))
        yield from results(wait=False)
    while pending:
        yield from results(wait=True)


def _start(
    scheduler: Scheduler,
    line: BatchLine,
    model_name: str,
    tokenizer,
    on_event: Callable[[Collector, Event], None],
) -> _Running | tuple[int, dict] | None:
    """``line`` submitted (a :class:`_Running`), its error ``(status, body)``, or None when the
    queue has no room for it now."""
    if line.error is not None:
        return line.error.status, line.error.body()
    try:
        requests, stream = accept(scheduler, line.body, model_name, tokenizer)
        if stream:
            raise ApiError(400, "stream must be false in a batch", "stream")
    except ApiError as error:
        return error.status, error.body()
    running = _Running(line, completion_head(model_name))
    for request in requests:
        collector = Collector(request.samples, request.logprobs is not None)
        request.on_event = lambda event, collector=collector: on_event(collector, event)
        running.collectors.append(collector)
    try:
        running.handles = submit(scheduler, requests)
    except QueueFull:
        if scheduler.stopping:
            return 503, ApiError(503, "the scheduler is shutting down").body()
        return None
    return running


def run_batch(
    scheduler: Scheduler,
    source: str | Path,
    output: str | Path,
    *,
    model_name: str,
    tokenizer,
    progress: bool = True,
    overwrite: bool = False,
) -> BatchSummary:
    """Run the batch file ``source`` on ``scheduler``, writing ``output`` line by line in the
    input's order (a tqdm bar with ``progress``). An ``output`` from an earlier run on the same
    input is continued after its last complete line (``overwrite``: started anew). Returns
    what was done; the scheduler is left running."""
    from tqdm import tqdm

    lines = read_batch(source)
    if overwrite and Path(output).exists():
        Path(output).unlink()
    skipped = resume_point(lines, output)
    summary = BatchSummary(skipped=skipped)
    start = time.perf_counter()
    bar = tqdm(total=len(lines), initial=skipped, unit="line", disable=not progress)
    with open(output, "a", encoding="utf-8") as out, bar:
        for line, status, body in run_lines(
            scheduler, lines[skipped:], model_name=model_name, tokenizer=tokenizer
        ):
            out.write(json.dumps(output_line(line, status, body)) + "\n")
            out.flush()  # a killed process loses nothing written
            summary.written += 1
            summary.errors += status != 200
            if status == 200:
                summary.tokens += body["usage"]["completion_tokens"]
            bar.update()
        os.fsync(out.fileno())
    summary.seconds = time.perf_counter() - start
    return summary
