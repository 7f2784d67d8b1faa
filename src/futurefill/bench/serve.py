"""``futurefill bench serve``: many requests arriving over time, served three ways.

A workload of ``--requests`` requests (prompts of the model's own kind of text, lengths drawn
log-uniformly from ``--prompt-lens``, output lengths from ``--output-lens``, greedy) arrives as a
Poisson process at each offered load of ``--rates`` (requests/s), at most ``--clients`` of them in
flight, to a model of ``--shape`` on ``--device``:

* ``bundled``: the bundled model (ConvLM, 4 STU-tensordot layers of width 128, bytes), prompts
  from its own training text;
* ``hyenadna``: a HyenaDNA-large-1m-shaped HyenaLM (width 256, 8 layers, random weights,
  :func:`~futurefill.bench.model.hyenadna_model`), prompts from a seeded random DNA sequence,
  the tokens chosen among the nucleotides (the DNA tokenizer's allowed ids).

It is served:

* ``continuous``: a :class:`~futurefill.serving.Scheduler` of ``--slots`` rows (continuous
  batching: each request joins the running batch as a slot frees, each row at its own position);
* ``static``: ``generate()`` on batches of up to ``--slots`` requests as they have arrived, a
  batch running until its longest request is done (what serving without per-row state does);
* ``sequential``: ``generate()`` on one request at a time, in arrival order;

each with compiled steps where ``--compile`` says so (after an untimed pass of each mode over
the first load's workload, which compiles them);
* ``http`` (with ``--http``): the continuous scheduler behind ``futurefill serve``, driven over
  loopback by ``--clients`` streaming clients.

Per mode and load: throughput (generated tokens/s and requests/s over the whole run), time to
first token and inter-token latency (p50 and p99); per load, continuous batching's throughput
over static batching's and over one request at a time's, and its p99 inter-token latency over
its p50 (``ratios``). Every mode's tokens are checked against ``sequential``'s (each request
alone): they must be identical. Writes ``serve.json``, ``serve.csv``, ``serve_table.md`` and
``serve_throughput.png`` / ``serve_latency.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from futurefill.cli import options as argtypes
from futurefill.online import METHODS
from futurefill.serving.scheduler import DEFAULT_PREFILL_CHUNK

MODES = ("continuous", "static", "sequential")
SHAPES = ("bundled", "hyenadna")
LENGTH_RANGES = {"prompt_lens": (16, 1024), "output_lens": (16, 512)}  # default (MIN, MAX)
DNA_CORPUS = 1 << 16  # nucleotides of the hyenadna shape's random sequence


@dataclasses.dataclass
class Job:
    """One request of the workload: when it arrives, its prompt, how many tokens it wants, and
    what was measured (token times, tokens)."""

    arrival: float
    prompt: list[int]
    max_tokens: int
    token_times: list[float] = dataclasses.field(default_factory=list)
    tokens: list[int] = dataclasses.field(default_factory=list)


def load_shape(shape: str, seed: int) -> tuple[torch.nn.Module, Any, Sequence[int]]:
    """The model of ``shape`` (see the module docstring), its tokenizer, and the token ids
    prompts are cut from."""
    from futurefill.pretrained.tokenizers import DnaTokenizer, load_with_tokenizer

    if shape == "bundled":
        from futurefill.demo.data import load_corpus

        model, tokenizer, _ = load_with_tokenizer()
        return model, tokenizer, load_corpus()
    from futurefill.bench.model import hyenadna_model

    tokenizer = DnaTokenizer()
    torch.manual_seed(seed)
    model = hyenadna_model(vocab_size=16, d_model=256, n_layers=8, max_len=1)
    nucleotides = torch.tensor(tokenizer.allowed_token_ids[:4])  # A, C, G, T
    picks = torch.randint(0, 4, (DNA_CORPUS,), generator=torch.Generator().manual_seed(seed))
    return model.eval(), tokenizer, nucleotides[picks].tolist()


def workload(args: argparse.Namespace, rate: float, corpus: Sequence[int]) -> list[Job]:
    """The requests at ``rate`` requests/s: Poisson arrivals, log-uniform lengths (seeded)."""
    rng = random.Random(args.seed)
    jobs, clock = [], 0.0
    for _ in range(args.requests):
        clock += rng.expovariate(rate)
        p = round(math.exp(rng.uniform(*map(math.log, args.prompt_lens))))
        n = round(math.exp(rng.uniform(*map(math.log, args.output_lens))))
        start = rng.randrange(len(corpus) - p)
        jobs.append(Job(clock, list(corpus[start : start + p]), n))
    return jobs


def _wait_until(start: float, at: float) -> None:
    delay = start + at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


def _drive(jobs: list[Job], clients: int, serve) -> None:
    """Each job served by ``serve(job, start)`` in a thread of its own from its arrival time,
    at most ``clients`` at a time."""
    free = threading.Semaphore(clients)
    start, threads = time.perf_counter(), []

    def client(job: Job) -> None:
        try:
            serve(job, start)
        finally:
            free.release()

    for job in jobs:
        _wait_until(start, job.arrival)
        free.acquire()
        thread = threading.Thread(target=client, args=(job,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


def run_continuous(model, tokenizer, jobs: list[Job], args: argparse.Namespace) -> None:
    """The jobs submitted to a :class:`~futurefill.serving.Scheduler` as they arrive; each
    event's time stamps the tokens generated since the last (read from the request's handle)."""
    from futurefill.serving import Event, Request, Scheduler

    scheduler = Scheduler(
        model,
        tokenizer,
        slots=args.slots,
        max_len=args.prompt_lens[1] + args.output_lens[1],
        queue_size=len(jobs),
        method=args.method,
        compile=args.compile,
        prefill_chunk=args.prefill_chunk,
    ).start()
    allowed = tokenizer.allowed_token_ids
    try:

        def serve(job: Job, start: float) -> None:
            submitted, done, handle = threading.Event(), threading.Event(), []

            def on_event(event: Event) -> None:
                now = time.perf_counter() - start
                submitted.wait()  # the handle, which the engine may beat submit() to
                while len(job.token_times) < len(handle[0].tokens):
                    job.token_times.append(now)
                if event.finish_reason is not None:
                    done.set()

            request = Request(
                job.prompt, job.max_tokens, on_event=on_event, allowed_token_ids=allowed
            )
            handle.append(scheduler.submit(request))
            submitted.set()
            done.wait()
            job.tokens = handle[0].tokens

        _drive(jobs, args.clients, serve)
    finally:
        scheduler.stop()


def run_static(model, tokenizer, jobs: list[Job], args: argparse.Namespace, batch: int) -> None:
    """``generate()`` on batches of up to ``batch`` arrived requests (1: one at a time)."""
    from futurefill import generate

    device = next(model.parameters()).device
    start, i = time.perf_counter(), 0
    while i < len(jobs):
        _wait_until(start, jobs[i].arrival)
        now = time.perf_counter() - start
        group = [jobs[i]]
        while len(group) < batch and i + len(group) < len(jobs):
            if jobs[i + len(group)].arrival > now:
                break
            group.append(jobs[i + len(group)])
        i += len(group)
        width = max(len(j.prompt) for j in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        for row, job in enumerate(group):
            ids[row, : len(job.prompt)] = torch.tensor(job.prompt)
        ids = ids.to(device)

        def put(tokens: torch.Tensor, group=group) -> None:
            now = time.perf_counter() - start
            for job, token in zip(group, tokens.tolist(), strict=True):
                if len(job.tokens) < job.max_tokens:
                    job.tokens.append(token)
                    job.token_times.append(now)

        longest = max(job.max_tokens for job in group)
        generate(
            model,
            ids,
            longest,
            prompt_lengths=[len(j.prompt) for j in group],
            method=args.method,
            compile=args.compile,
            allowed_token_ids=tokenizer.allowed_token_ids,
            streamer=put,
        )


def run_http(jobs: list[Job], args: argparse.Namespace) -> None:
    """The continuous scheduler behind ``futurefill serve`` on loopback, streaming clients."""
    import socket
    import subprocess

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "futurefill.cli",
        "serve",
        "--port",
        str(port),
        "--slots",
        str(args.slots),
        "--queue-size",
        str(len(jobs)),
        "--method",
        args.method,
        "--prefill-chunk",
        str(args.prefill_chunk),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("futurefill serve did not start") from None
                time.sleep(0.2)

        def serve(job: Job, start: float) -> None:
            body = {
                "model": "futurefill-pydoc-stu",
                "prompt": job.prompt,
                "max_tokens": job.max_tokens,
                "temperature": 0,
                "stream": True,
            }
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as reply:
                for line in reply.iter_lines():
                    if line.startswith("data: {"):
                        event = json.loads(line[6:])
                        if event["choices"][0]["text"]:
                            job.token_times.append(time.perf_counter() - start)
                        if "usage" in event:
                            count = event["usage"]["completion_tokens"]
                            job.tokens = [0] * count  # counted; the ids are not sent back

        _drive(jobs, args.clients, serve)
    finally:
        server.terminate()
        server.wait(60)


def summarize(jobs: list[Job]) -> dict[str, float]:
    """Throughput and latency percentiles of a served workload (seconds)."""
    end = max(j.token_times[-1] for j in jobs if j.token_times)
    begin = min(j.arrival for j in jobs)
    tokens = sum(len(j.tokens) for j in jobs)
    first = [j.token_times[0] - j.arrival for j in jobs if j.token_times]
    gaps = [b - a for j in jobs for a, b in zip(j.token_times, j.token_times[1:], strict=False)]
    gaps = [g for g in gaps if g > 0] or [0.0]  # tokens of one step share a time

    def pct(values: list[float], q: float) -> float:
        return (
            statistics.quantiles(values, n=100, method="inclusive")[q - 1]
            if len(values) > 1
            else values[0]
        )

    return {
        "seconds": end - begin,
        "tokens": tokens,
        "tokens_per_s": tokens / (end - begin),
        "requests_per_s": len(jobs) / (end - begin),
        "ttft_median_s": statistics.median(first),
        "ttft_p99_s": pct(first, 99),
        "itl_median_s": statistics.median(gaps),
        "itl_p99_s": pct(gaps, 99),
    }


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per load: continuous batching's tokens/s over static batching's and over sequential's,
    and its p99 inter-token latency over its p50 (where those modes ran)."""
    out = []
    for rate in dict.fromkeys(r["rate"] for r in rows):
        by_mode = {r["mode"]: r for r in rows if r["rate"] == rate}
        continuous = by_mode.get("continuous")
        if continuous is None:
            continue
        entry: dict[str, Any] = {"rate": rate}
        for mode in ("static", "sequential"):
            if mode in by_mode:
                speedup = continuous["tokens_per_s"] / by_mode[mode]["tokens_per_s"]
                entry[f"continuous_over_{mode}"] = speedup
        entry["itl_p99_over_p50"] = continuous["itl_p99_s"] / max(continuous["itl_median_s"], 1e-12)
        out.append(entry)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="continuous batching against static batching and one request at a time",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    size = argtypes.bounded_int(1)
    parser.add_argument("--requests", type=size, default=64, help="requests per load")
    parser.add_argument(
        "--rates",
        type=argtypes.finite_float(0, low_open=True),
        nargs="+",
        default=[2.0, 8.0, 32.0],
        help="offered loads, requests/s",
    )
    parser.add_argument("--clients", type=size, default=32, help="requests in flight at most")
    parser.add_argument("--slots", type=size, default=8, help="rows decoded together")
    parser.add_argument(
        "--prefill-chunk",
        type=size,
        default=DEFAULT_PREFILL_CHUNK,
        help="prompt tokens prefilled in one iteration at most (continuous, http)",
    )
    for name, default in LENGTH_RANGES.items():
        what = name.removesuffix("_lens")
        parser.add_argument(
            f"--{what}-lens",
            type=size,
            nargs=2,
            default=list(default),
            metavar=("MIN", "MAX"),
            help=f"{what} lengths, log-uniform",
        )
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=list(MODES), help="ways of serving"
    )
    parser.add_argument("--http", action="store_true", help="also through futurefill serve")
    parser.add_argument("--shape", choices=SHAPES, default="bundled", help="model served")
    parser.add_argument("--device", type=argtypes.device_name, default="cpu", help="device")
    parser.add_argument(
        "--method", choices=METHODS, default="continuous", help="online convolution engine"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compiled steps in every mode (a warm-up pass of each mode compiles them first)",
    )
    parser.add_argument("--seed", type=argtypes.seed, default=0, help="workload seed")
    parser.add_argument("--threads", type=argtypes.threads, default=1, help="torch threads")
    parser.add_argument(
        "--out",
        type=argtypes.output_dir,
        default=Path("results/serve"),
        help="where the report goes",
    )
    parser.set_defaults(func=run)


def serve_once(mode: str, model, tokenizer, jobs: list[Job], args: argparse.Namespace) -> None:
    """``jobs`` served one way (``mode``)."""
    if mode == "continuous":
        run_continuous(model, tokenizer, jobs, args)
    elif mode == "http":
        run_http(jobs, args)
    else:
        run_static(model, tokenizer, jobs, args, args.slots if mode == "static" else 1)


def run(args: argparse.Namespace) -> int:
    from futurefill.bench import plots
    from futurefill.bench.machine import machine_info, resolve_device

    for name in LENGTH_RANGES:
        low, high = getattr(args, name)
        if low > high:
            raise argtypes.UsageError(f"--{name.replace('_', '-')}: MIN {low} is above MAX {high}")
    if args.http and ((args.shape, args.device) != ("bundled", "cpu") or args.compile):
        raise argtypes.UsageError(
            "--http: futurefill serve runs the bundled model on the CPU, eagerly here"
        )
    model, tokenizer, corpus = load_shape(args.shape, args.seed)
    if args.prompt_lens[1] + args.output_lens[1] > model.config.max_len:
        raise argtypes.UsageError(
            f"--prompt-lens and --output-lens: {args.prompt_lens[1]} + {args.output_lens[1]} "
            f"tokens exceed the model's max_len {model.config.max_len}"
        )
    device = resolve_device(args.device)
    model = model.to(device)
    torch.set_num_threads(args.threads)
    modes = [*args.modes, *(["http"] if args.http else [])]
    rows, failures = [], []
    began = time.perf_counter()
    if args.compile:  # untimed: the compiled step and the scheduled work's patterns compile
        for mode in args.modes:
            serve_once(mode, model, tokenizer, workload(args, args.rates[0], corpus), args)
    for rate in args.rates:
        served: dict[str, list[Job]] = {}
        for mode in modes:
            jobs = workload(args, rate, corpus)
            serve_once(mode, model, tokenizer, jobs, args)
            served[mode] = jobs
            row = {"mode": mode, "rate": rate, **summarize(jobs)}
            rows.append(row)
            print(
                json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
        if "sequential" in served:
            for mode, jobs in served.items():
                if mode in ("sequential", "http"):
                    continue
                for i, (job, alone) in enumerate(zip(jobs, served["sequential"], strict=True)):
                    if job.tokens != alone.tokens:
                        failures.append(f"rate {rate}: {mode} request {i} differs from alone")
    machine = machine_info(device, torch.float32)
    report = {
        "config": {k: v for k, v in vars(args).items() if k != "func"} | {"out": str(args.out)},
        "machine": machine,
        "rows": rows,
        "ratios": ratios(rows),
        "failures": failures,
        "wall_s": time.perf_counter() - began,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps(report, indent=1, default=str))
    with open(out / "serve.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = _table(rows, report["ratios"])
    (out / "serve_table.md").write_text(table + "\n")
    _plot(rows, out, plots)
    print(table)
    print(
        f"Wrote {out}/serve.json, serve.csv, serve_table.md, serve_throughput.png, "
        f"serve_latency.png ({report['wall_s']:.0f} s)"
    )
    if failures:
        print("bench serve: TOKENS DIFFER:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


def _table(rows: list[dict[str, Any]], found: list[dict[str, Any]]) -> str:
    lines = [
        "| load (req/s) | mode | tokens/s | requests/s | TTFT p50 / p99 | ITL p50 / p99 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rate']:g} | {r['mode']} | {r['tokens_per_s']:.0f} | {r['requests_per_s']:.2f} "
            f"| {r['ttft_median_s'] * 1e3:.0f} / {r['ttft_p99_s'] * 1e3:.0f} ms "
            f"| {r['itl_median_s'] * 1e3:.2f} / {r['itl_p99_s'] * 1e3:.2f} ms |"
        )
    for entry in found:
        over = [
            f"{entry[f'continuous_over_{mode}']:.2f}x {mode}'s"
            for mode in ("static", "sequential")
            if f"continuous_over_{mode}" in entry
        ]
        lines.append(
            f"- load {entry['rate']:g}: continuous tokens/s {', '.join(over) or '-'}; its ITL "
            f"p99 / p50 {entry['itl_p99_over_p50']:.1f}x"
        )
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], out: Path, plots) -> None:
    from matplotlib.figure import Figure

    for name, key, label in (
        ("serve_throughput", "tokens_per_s", "generated tokens / s"),
        ("serve_latency", "itl_p99_s", "p99 inter-token latency (s)"),
    ):
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        for mode in dict.fromkeys(r["mode"] for r in rows):
            points = [(r["rate"], r[key]) for r in rows if r["mode"] == mode]
            ax.plot(*zip(*points, strict=True), marker="o", label=mode)
        ax.set(xscale="log", yscale="log", xlabel="offered load (requests / s)", ylabel=label)
        ax.grid(True, alpha=0.4)
        ax.legend()
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
