"""Offline batches on Ray Data (``futurefill batch --ray``): the batch file's lines through
``map_batches`` with a pool of actors, each holding one model and its
:class:`~futurefill.serving.Scheduler` (continuous batching over the lines it is given), the
results written by the driver in the input's order as they stream back, in the same format and
with the same resumption as :func:`~futurefill.serving.batch.run_batch` (a line's outcome does
not depend on where it ran: each request gets what it would get alone)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from futurefill.serving.api import ApiError
from futurefill.serving.batch import (
    BatchLine,
    BatchSummary,
    output_line,
    read_batch,
    resume_point,
    run_lines,
)
from futurefill.serving.options import SchedulerOptions

__all__ = ["BatchActor", "run_batch_on_ray"]


def _row(line: BatchLine) -> dict:
    """A line as a dataset row (plain strings and ints)."""
    error = line.error
    return {
        "number": line.number,
        "custom_id": line.custom_id or "",
        "body": "" if line.body is None else json.dumps(line.body),
        "error": "" if error is None else json.dumps([error.status, error.message, error.param]),
    }


def _line(row: dict) -> BatchLine:
    error = None
    if row["error"]:
        error = ApiError(*json.loads(row["error"]))
    body = json.loads(row["body"]) if row["body"] else None
    return BatchLine(int(row["number"]), row["custom_id"] or None, body, error)


class BatchActor:
    """A Ray Data actor: one model and its scheduler (started once), the batches of lines it
    is given run on it, each line's output line returned."""

    def __init__(self, settings: SchedulerOptions):
        import torch

        device = "cuda" if torch.cuda.is_available() else None  # Ray gave it one GPU, if any
        self.scheduler, self.tokenizer = settings.build(device=device)
        self.name = settings.name
        self.scheduler.start()

    def __call__(self, batch: dict) -> dict:
        keys = ("number", "custom_id", "body", "error")
        columns = zip(*(batch[key] for key in keys), strict=True)
        lines = [_line(dict(zip(keys, values, strict=True))) for values in columns]
        outputs = [
            json.dumps(output_line(line, status, body))
            for line, status, body in run_lines(
                self.scheduler, lines, model_name=self.name, tokenizer=self.tokenizer
            )
        ]
        return {"number": batch["number"], "output": outputs}

    def __del__(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.stop()


def run_batch_on_ray(
    settings: SchedulerOptions,
    source: str | Path,
    output: str | Path,
    *,
    actors: int = 1,
    address: str | None = None,
    lines_per_batch: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> BatchSummary:
    """Run the batch file ``source`` on ``actors`` Ray actors (each a model built from
    ``settings``; one GPU each where CUDA is present), writing ``output`` in the input's order as
    results stream back; an ``output`` from an earlier run is continued (``overwrite``: started
    anew). Connects to the cluster at ``address`` (default: a running one, else a new local
    one). ``lines_per_batch`` (default ``4 x slots``) lines go to an actor at a time."""
    import ray
    import torch
    from tqdm import tqdm

    lines = read_batch(source)
    if overwrite and Path(output).exists():
        Path(output).unlink()
    skipped = resume_point(lines, output)
    summary = BatchSummary(skipped=skipped)
    start = time.perf_counter()
    remaining = lines[skipped:]
    if not ray.is_initialized():
        ray.init(
            address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
        )
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its plans and timings: not ours
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # outputs in the input's order
    context.enable_progress_bars = False
    bar = tqdm(total=len(lines), initial=skipped, unit="line", disable=not progress)
    with open(output, "a", encoding="utf-8") as out, bar:
        if remaining:
            dataset = ray.data.from_items([_row(line) for line in remaining]).map_batches(
                BatchActor,
                fn_constructor_kwargs={"settings": settings},
                batch_size=lines_per_batch or 4 * settings.slots,
                concurrency=actors,
                num_cpus=1,
                num_gpus=1 if torch.cuda.is_available() else 0,
            )
            for row in dataset.iter_rows():
                out.write(row["output"] + "\n")
                out.flush()  # a stopped job loses nothing written
                result = json.loads(row["output"])
                summary.written += 1
                status = result["response"]["status_code"]
                summary.errors += status != 200
                if status == 200:
                    summary.tokens += result["response"]["body"]["usage"]["completion_tokens"]
                bar.update()
        os.fsync(out.fileno())
    summary.seconds = time.perf_counter() - start
    return summary
