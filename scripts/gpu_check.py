"""The GPU check: every CUDA path of futurefill in one run, results under docs/results/gpu-<name>/.

Run from the repository root with any python3 that has torch (no install: it imports the source
tree), ``python3 scripts/gpu_check.py`` or ``make gpu-check``. With CUDA, in under 9 minutes (the
parts' time limits add up to 535 s):

1. ``tests``: the test suite's CUDA cases (``pytest -m cuda``: the device-parametrized exactness
   tests, the compiled steps with CUDA graphs, the deamortized jobs on their side stream).
2. ``compiled``: the bundled model's shape (ConvLM, 4 STU-tensordot layers of width 128, float32)
   generating 128 tokens with every method, eager and compiled (CUDA graphs): tokens equal, no
   recompile for a second length, no CUDA graph skipped, per-token time of each.
3. ``sync``: continuous and deamortized engine steps (128 channels, jobs on the side stream) and
   a session's traced steps under ``torch.cuda.set_sync_debug_mode("error")``: any host
   synchronization inside a step is an error.
4. ``layer``: ``bench layer`` at L = 2^14, 2^18, 2^20, 128 channels, every online method eager
   and as a compiled layer step (``compiled-<method>``) and offline; at each L the last 2048
   steps are timed after a prefill of the rest (``--steps``), each step's host time and device
   time (CUDA events): p50 / p99 / p99.9 per method, every method at 2^20.
5. ``paper``: ``bench paper``, the FutureFill paper's experiment: an STU-only ConvLM of 8 layers
   of width 1024 (515.9M parameters) generating 16,384 tokens from a one-token prompt, naive /
   epoched / continuous, eager and compiled in float32, eager in bfloat16; continuous compiled
   and naive (eager and compiled) over all 16,384 tokens (a run past its 30 s budget stops and
   is projected), the others over 1024 and projected; runs not started by 140 s are not run.
   Beside the paper's 52.22 s (epoched) and 111.92 s (naive) on an H100. Targets: continuous
   compiled float32 <= 15 s and >= 7x naive eager float32.
6. ``serve``, ``serve-hyenadna``: ``bench serve`` (continuous batching, static batching, one
   request at a time) of the bundled model, compiled (the scheduler's compiled step over every
   slot, replayed through admissions and releases), and of a HyenaDNA-large-1m-shaped HyenaLM,
   eager: tokens/s,
   time to first token and inter-token latency p50 / p99. Targets: continuous >= 4x one at a
   time and >= 1.5x static in tokens/s, its p99 inter-token latency <= 3x its p50.
7. ``hyenadna``: ``bench context`` for the HyenaDNA-large-1m shape at P = 2^14 and 2^20, with
   naive, continuous and the compiled step.

Each part runs in a process of its own under a time limit; a part that fails is reported and the
others still run. A one-screen summary (each part's figures, the targets met or missed) goes to
stdout and to ``summary.md``. Without CUDA it says so in one line, then dry-runs the same code on
the CPU at tiny sizes (fewer compiled methods) into a temporary directory and exits 0 when every
part works (1 otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

# Sizes with a GPU, and for the CPU dry run (same code, tiny; fewer compiled methods, whose
# compiles take most of a dry run's time). Each part's options are a string.
FULL = {
    "compiled_tokens": 128,
    "sync_len": 4096,
    # Every method at L = 2^20: the last 2048 steps after a prefill (the warm-up's 2048 steps
    # compile every graph a compiled step's scheduled work needs there).
    "layer": "--lengths 16384 262144 1048576 --steps 2048 --warmup-len 2048 --budget 60 "
    "--methods naive epoched continuous deamortized compiled-naive compiled-epoched "
    "compiled-continuous compiled-deamortized offline",
    # The paper's shape is bench paper's default. The runs not started by 95 s are not run, so
    # that the part ends, its report written, within its time limit.
    "paper": "--tokens 16384 --prefix 1024 --budget 30 --time-limit 95",
    "serve": "--requests 32 --rates 200 --prompt-lens 16 512 --output-lens 32 256 --slots 8 "
    "--compile",
    "serve-hyenadna": "--requests 24 --rates 200 --prompt-lens 64 1024 --output-lens 32 256 "
    "--slots 8",
    "hyenadna": "--prompt-lens 16384 1048576 --new-tokens 128 --budget 30",
    # 535 s in all at most: the first run's tests took 86 s for 275 CUDA cases (more now, a
    # dozen of them compiled), its compiled part 41 s for three methods (four now, and a step
    # profile).
    "timeouts": {
        "tests": 150,
        "compiled": 55,
        "sync": 20,
        "layer": 80,
        "paper": 125,
        "serve": 40,
        "serve-hyenadna": 30,
        "hyenadna": 35,
    },
}
DRY = {
    "compiled_tokens": 24,
    "sync_len": 64,
    # One torch thread: on a loaded 2-core machine a compiled CPU step's threads wait for each
    # other (16 ms a step, not 0.3).
    "layer": "--lengths 128 512 --steps 128 --warmup-len 128 --budget 30 --threads 1 "
    "--methods naive epoched continuous deamortized compiled-naive compiled-continuous offline",
    "paper": "--layers 2 --width 32 --vocab 256 --mlp-ratio 4 --tokens 64 --prefix 32 "
    "--budget 30 --methods naive continuous --threads 1",
    "serve": "--requests 6 --rates 50 --prompt-lens 4 40 --output-lens 2 12 --slots 3",
    "serve-hyenadna": "--requests 4 --rates 50 --prompt-lens 4 40 --output-lens 2 12 --slots 3",
    "hyenadna": "--prompt-lens 64 --new-tokens 16 --budget 5",
    "timeouts": {
        "tests": 300,
        "compiled": 300,
        "sync": 60,
        "layer": 200,
        "paper": 200,
        "serve": 60,
        "serve-hyenadna": 60,
        "hyenadna": 120,
    },
}
PARTS = tuple(FULL["timeouts"])


def run_part(name: str, command: list[str], out: Path, timeout: int) -> dict:
    """Run one part in its own process; its output goes to ``out/<name>.log``."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
        PYTHONUNBUFFERED="1",
    )
    began = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        try:
            proc = subprocess.run(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
            )
            status = proc.returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
    seconds = time.perf_counter() - began
    tail = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
    return {"part": name, "status": status, "seconds": round(seconds, 1), "last_line": tail[0]}


def bench(kind: str, args: str, device: str, out: Path) -> list[str]:
    """The command line of ``futurefill bench <kind> <args> --device <device> --out <out>``."""
    return [
        sys.executable,
        "-m",
        "futurefill.cli",
        "bench",
        kind,
        *args.split(),
        "--device",
        device,
        "--out",
        str(out),
    ]


def parts(sizes: dict, device: str, out: Path) -> list[tuple[str, list[str]]]:
    py, me = sys.executable, [sys.executable, __file__, "--device", device, "--out", str(out)]
    layer = "--channels 128 --repeats 2 --no-progress"
    serve = "--clients 32 --threads 1"
    # The float32 forward itself differs from float64 by a relative 4.1e-4 at P = 2^18 on the
    # GPU, every method alike (its prefill FFT; the preset's 3e-4 was set from P <= 2^17): the
    # tolerance here is wider, and the methods' greedy tokens are compared besides.
    hyenadna = "--preset hyenadna --tol 2e-3 --methods naive continuous compiled --repeats 1"
    return [
        ("tests", [py, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider",
                   "--maxfail=20", "--no-header", "tests"]),
        ("compiled", [*me, "--part", "compiled", "--tokens", str(sizes["compiled_tokens"])]),
        ("sync", [*me, "--part", "sync", "--tokens", str(sizes["sync_len"])]),
        ("layer", bench("layer", f"{layer} {sizes['layer']}", device, out / "layer")),
        ("paper", bench("paper", sizes["paper"], device, out / "paper")),
        ("serve", bench("serve", f"{serve} {sizes['serve']}", device, out / "serve")),
        ("serve-hyenadna", bench("serve", f"{serve} --shape hyenadna {sizes['serve-hyenadna']}",
                                 device, out / "serve-hyenadna")),
        ("hyenadna", bench("context", f"{hyenadna} --no-progress {sizes['hyenadna']}", device,
                           out / "hyenadna")),
    ]  # fmt: skip


# ------------------------------------------------------------------ parts run in this file


def part_compiled(device: torch.device, tokens: int, out: Path) -> None:
    """Eager and compiled generation of the bundled model's shape: tokens, recompiles, skips,
    per-token time."""
    from torch._dynamo.utils import counters

    from futurefill import METHODS, ConvLM, ConvLMConfig, generate
    from futurefill.bench.common import timed

    config = json.loads((ROOT / "src/futurefill/checkpoints/pydoc-stu/config.json").read_text())
    config["max_len"] = max(config["max_len"], 2 * tokens + 64)
    torch.manual_seed(0)
    model = ConvLM(ConvLMConfig(**config)).to(device).eval()
    ids = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(1)).to(device)
    rows = []
    for method in METHODS:
        row = {"method": method}
        for compiled in (False, True):
            # Warm-up at the full length: it compiles the forward and the scheduled work of
            # every pattern the measured runs meet.
            generate(model, ids, tokens, method=method, compile=compiled)
            frames, graphs = counters["frames"]["total"], counters["stats"]["unique_graphs"]
            run = functools.partial(generate, model, ids, tokens, method=method, compile=compiled)
            runs = [timed(run, device) for _ in range(2)]
            new, times = runs[-1][0], [seconds for _, seconds in runs]
            shorter = generate(model, ids, tokens // 2 + 1, method=method, compile=compiled)
            key = "compiled" if compiled else "eager"
            row[f"{key}_per_token_us"] = round(min(times) / tokens * 1e6, 1)
            row[f"{key}_tokens"] = new
            row[f"{key}_prefix_equal"] = bool(torch.equal(shorter[0], new[0, : shorter.shape[1]]))
            if compiled:
                row["recompiles"] = counters["frames"]["total"] - frames
                row["new_graphs"] = counters["stats"]["unique_graphs"] - graphs
        row["tokens_equal"] = bool(torch.equal(row.pop("eager_tokens"), row.pop("compiled_tokens")))
        row["speedup"] = round(row["eager_per_token_us"] / row["compiled_per_token_us"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    skips = dict(counters["inductor"]).get("cudagraph_skips", 0)
    report = {
        "config": config,
        "prompt": 64,
        "tokens": tokens,
        "rows": rows,
        "cudagraph_skips": skips,
        "step_profile": step_profile(model, ids, tokens, device),
        "device": str(device),
    }
    print(json.dumps(report["step_profile"]), flush=True)
    (out / "compiled.json").write_text(json.dumps(report, indent=1))
    bad = [r["method"] for r in rows if not (r["tokens_equal"] and r["compiled_prefix_equal"])]
    bad += [r["method"] for r in rows if r["recompiles"] or r["new_graphs"]]
    if bad or skips:
        raise SystemExit(f"compiled check failed: {bad}, cudagraph skips {skips}")


def step_profile(
    model: torch.nn.Module, ids: torch.Tensor, steps: int, device: torch.device
) -> dict:
    """What one compiled continuous step costs, batch 1: ``steps`` steps after the prompt
    ``ids``, a third time (the first run compiles every pattern's scheduled work, the second
    captures its graphs): host time per step (the calls alone, and to the device's end), and on
    CUDA, from the profiler over a fourth run, the graph launches and kernels per step (tile
    ends included): the floor a per-token target is measured against."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from futurefill import Decoder

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    length = ids.shape[1] + steps + 1
    with Decoder(model, batch_size=1, max_len=length, compile=True) as decoder:

        def run(around: contextlib.AbstractContextManager) -> tuple[float, float]:
            out = decoder.prefill(ids)  # (every row anew: the graphs are kept)
            sync()
            with around:
                start = time.perf_counter()
                for _ in range(steps):
                    out = decoder.step(out.greedy)
                calls = time.perf_counter() - start
                sync()
            return calls, time.perf_counter() - start

        run(contextlib.nullcontext())
        run(contextlib.nullcontext())
        calls, ended = run(contextlib.nullcontext())
        result = {
            "steps": steps,
            "host_us_per_step": round(calls / steps * 1e6, 1),
            "us_per_step_to_device_end": round(ended / steps * 1e6, 1),
            "graphs_captured": decoder._compiled.captures,
        }
        if device.type == "cuda":
            profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            run(profiler)
            events = profiler.events()
            kernels = [
                e
                for e in events
                if e.device_type == DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset"))
            ]
            launches = [e for e in events if e.name == "cudaGraphLaunch"]
            result["kernels_per_step"] = round(len(kernels) / steps, 1)
            result["graph_launches_per_step"] = round(len(launches) / steps, 2)
    return result


@contextlib.contextmanager
def host_syncs_are_errors(device: torch.device) -> Iterator[None]:
    """Inside, an operation that synchronizes the host with ``device`` raises (CUDA; on the CPU
    nothing to check)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def part_sync(device: torch.device, length: int, out: Path) -> None:
    """Engine steps and a session's traced steps with host synchronization made an error."""
    from futurefill import METHODS, ConvLM, ConvLMConfig, OnlineConv, decoding
    from futurefill.nn import traced_step
    from futurefill.online import deamortized

    h = torch.randn(128, length, device=device) / length**0.5
    results = {}
    for method in METHODS:
        conv = OnlineConv(h, method=method, max_len=length)
        u, y = torch.randn(1, 128, device=device), torch.empty(1, 128, device=device)
        conv.prefill(torch.randn(1, 128, 3, device=device))
        with host_syncs_are_errors(device):
            while conv.position < length:
                conv.step(u, out=y)
                torch.tanh(y, out=u)
        results[method] = f"no host sync in {length - 3} steps"
        print(method, results[method], flush=True)
    assert deamortized.SMALL_JOB_POINTS < 128 * length  # the large levels were queued jobs
    torch.manual_seed(0)
    config = ConvLMConfig(d_model=64, n_layers=2, max_len=length, mixer="hyena")
    model = ConvLM(config).to(device).eval()
    ids = torch.randint(0, 256, (1, 8), device=device)
    with torch.inference_mode(), decoding(model, batch_size=1, max_len=length) as session:
        session.feed(ids)
        step = traced_step(model)
        logits = session.feed_traced(step, ids[:, :1], rows=[0])  # the first readies the states
        next_ids = logits[:, -1].argmax(-1, keepdim=True)
        with host_syncs_are_errors(device):
            for _ in range(min(length - 9, 300)):
                logits = session.feed_traced(step, next_ids, rows=[0])
                next_ids = logits[:, -1].argmax(-1, keepdim=True)
    results["session traced steps (eager)"] = "no host sync"
    (out / "sync.json").write_text(json.dumps(results, indent=1))


# ------------------------------------------------------------------ the summary

Target = tuple[str, str, bool | None]  # what, the value measured, met (None: not judged)


def judged(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not judged"}[met]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f}"


def layer_summary(out: Path) -> tuple[list[str], list[Target]]:
    """The layer part's table (a line per method and L) and its target: every method has a
    figure at the largest L."""
    path = out / "layer" / "layer.json"
    if not path.exists():
        return [], []
    report = json.loads(path.read_text())
    steps = report["config"]["steps"]
    lines = [
        "",
        "bench layer, 128 channels, float32, batch 1"
        + (f", the last {steps} steps of each L after a prefill of the rest" if steps else "")
        + " (µs; host: around the call; device: CUDA events around the step, or host time "
        "where the clock says so):",
        "",
        "| method | L | µs/step | host median / p99.9 / max | device p50 / p99 / p99.9 | clock |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['L']} | {r['status'][:50]} | | | |")
            continue
        host = device = ""
        if "step_median_s" in r:
            host = " / ".join(us(r[k]) for k in ("step_median_s", "step_p999_s", "step_max_s"))
        if "device_step_p50_s" in r:
            keys = ("device_step_p50_s", "device_step_p99_s", "device_step_p999_s")
            device = " / ".join(us(r[k]) for k in keys)
        lines.append(
            f"| {r['method']} | {r['L']} | {r['per_token_s'] * 1e6:.1f} | {host} | {device} | "
            f"{r.get('step_clock', '')} |"
        )
    longest = max(r["L"] for r in report["rows"])
    missing = [r["method"] for r in report["rows"] if r["L"] == longest and r["status"] != "ok"]
    targets = [
        (
            f"bench layer: every method has a figure at L = {longest}",
            ", ".join(missing) + " without" if missing else "all",
            not missing,
        )
    ]
    for r in report["rows"]:  # deamortized: its device-time tail at the long lengths
        if "deamortized" in r["method"] and r["L"] >= 2**18 and "device_step_p50_s" in r:
            ratio = r["device_step_p999_s"] / r["device_step_p50_s"]
            what = f"bench layer: {r['method']} device p99.9 <= 3x p50 at L = {r['L']}"
            targets.append(
                (what, f"{ratio:.2f}x", ratio <= 3 if r["step_clock"] != "host" else None)
            )
    return lines, targets


def compiled_targets(report: dict) -> list[Target]:
    """The bundled shape's compiled continuous step: <= 100 us per token on the GPU."""
    row = next(r for r in report["rows"] if r["method"] == "continuous")
    value = row["compiled_per_token_us"]
    on_gpu = report["device"].startswith("cuda")
    return [("bundled shape, compiled continuous, batch 1: <= 100 us/token", f"{value}",
             value <= 100 if on_gpu else None)]  # fmt: skip


def hyenadna_targets(data: dict) -> list[Target]:
    """HyenaDNA-large-1m's shape, compiled: >= 4000 tokens/s at the longest P, and within 1.3x
    from the shortest P to it."""
    rows = {r["P"]: r for r in data["rows"] if r["method"] == "compiled" and r.get("tokens_per_s")}
    if not rows:
        return []
    shortest, longest = min(rows), max(rows)
    on_gpu = data.get("machine", {}).get("gpu") is not None
    rate, flat = (
        rows[longest]["tokens_per_s"],
        rows[shortest]["tokens_per_s"] / rows[longest]["tokens_per_s"],
    )
    return [
        (f"hyenadna compiled: >= 4000 tokens/s at P = {longest}", f"{rate:.0f}",
         rate >= 4000 if on_gpu and longest >= 2**20 else None),
        (f"hyenadna compiled: P = {shortest} within 1.3x of P = {longest}", f"{flat:.2f}x",
         flat <= 1.3 if on_gpu and longest >= 2**20 else None),
    ]  # fmt: skip


def paper_summary(out: Path) -> tuple[list[str], list[Target]]:
    """The paper part's report as ``bench paper`` wrote it (``paper.md``), and its targets."""
    path = out / "paper" / "paper.json"
    if not path.exists():
        return [], []
    report = json.loads(path.read_text())
    lines = ["", *(out / "paper" / "paper.md").read_text().splitlines()[2:]]  # (its title off)
    targets = [
        (
            f"bench paper: {t['target']}",
            "-" if t["value"] is None else f"{t['value']:.2f}",
            t["met"],
        )
        for t in report["ratios"].get("targets", ())
    ]
    return lines, targets


SERVE_TARGETS = (
    ("continuous_over_sequential", ">= 4x one at a time in tokens/s", lambda v: v >= 4.0),
    ("continuous_over_static", ">= 1.5x static batching in tokens/s", lambda v: v >= 1.5),
    ("itl_p99_over_p50", "p99 inter-token latency <= 3x its p50", lambda v: v <= 3.0),
)


def serve_summary(out: Path, name: str) -> tuple[list[str], list[Target]]:
    """A serve part's table (a line per mode and load) and its targets."""
    path = out / name / "serve.json"
    if not path.exists():
        return [], []
    report = json.loads(path.read_text())
    shape = report["config"]["shape"]
    lines = [
        "",
        f"bench serve, {shape} shape ({report['config']['requests']} requests, "
        f"{report['config']['slots']} slots):",
        "",
        "| load (req/s) | mode | tokens/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['rate']:g} | {r['mode']} | {r['tokens_per_s']:.0f} | "
            f"{r['ttft_median_s'] * 1e3:.1f} / {r['ttft_p99_s'] * 1e3:.1f} | "
            f"{r['itl_median_s'] * 1e3:.2f} / {r['itl_p99_s'] * 1e3:.2f} |"
        )
    if report["failures"]:
        lines.append(f"- TOKENS DIFFER: {'; '.join(report['failures'])}")
    targets = [
        (f"serve {shape} at {entry['rate']:g} req/s: continuous {what}", f"{entry[key]:.2f}x",
         ok(entry[key]))
        for entry in report["ratios"]
        for key, what, ok in SERVE_TARGETS
        if key in entry
    ]  # fmt: skip
    return lines, targets


def summarize(out: Path, results: list[dict]) -> str:
    lines = ["# GPU check", ""]
    machine = {}
    for report in sorted(out.glob("*/*.json")):
        machine = json.loads(report.read_text()).get("machine", machine)
    if machine:
        lines.append(
            "Machine: "
            + ", ".join(
                f"{k} {machine[k]}"
                for k in ("gpu", "torch_version", "cuda_version", "cpu")
                if k in machine
            )
        )
        lines.append("")
    lines += ["| part | status | seconds | last line |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['part']} | {r['status']} | {r['seconds']} | {r['last_line'][:70]} |")
    sections: list[str] = []
    targets: list[Target] = []
    for part_lines, part_targets in (
        layer_summary(out),
        paper_summary(out),
        serve_summary(out, "serve"),
        serve_summary(out, "serve-hyenadna"),
    ):
        sections += part_lines
        targets += part_targets
    compiled = out / "compiled.json"
    if compiled.exists():
        targets += compiled_targets(json.loads(compiled.read_text()))
    hyenadna = out / "hyenadna" / "context.json"
    if hyenadna.exists():
        targets += hyenadna_targets(json.loads(hyenadna.read_text()))
    if targets:
        lines += ["", "| target | measured | |", "|---|---|---|"]
        lines += [f"| {what} | {value} | {judged(met)} |" for what, value, met in targets]
    if compiled.exists():
        report = json.loads(compiled.read_text())
        lines += [
            "",
            f"Compiled decoding, bundled model's shape, {report['tokens']} tokens after "
            f"a 64-token prompt (CUDA graph skips: {report['cudagraph_skips']}):",
            "",
            "| method | eager us/token | compiled us/token | speed-up | tokens equal | "
            "recompiles |",
            "|---|---|---|---|---|---|",
        ]
        for r in report["rows"]:
            lines.append(
                f"| {r['method']} | {r['eager_per_token_us']} | "
                f"{r['compiled_per_token_us']} | {r['speedup']}x | {r['tokens_equal']} | "
                f"{r['recompiles']} |"
            )
        profile = report.get("step_profile", {})
        lines += [
            "",
            "One compiled continuous step after every graph is captured: "
            + ", ".join(f"{k} {v}" for k, v in profile.items()),
        ]
    lines += sections
    path = out / "hyenadna" / "context.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += [
            "",
            "bench context (hyenadna): decode tokens/s after P prompt tokens, host time of a "
            "step (us):",
            "",
            "| method | P | tokens/s | prefill s | median / p99 / max step | status |",
            "|---|---|---|---|---|---|",
        ]
        for r in data["rows"]:
            tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else ""
            pre = f"{r['prefill_s']:.3f}" if r.get("prefill_s") else ""
            steps = ""
            if r.get("step_median_s"):
                steps = " / ".join(us(r[k]) for k in ("step_median_s", "step_p99_s", "step_max_s"))
            lines.append(
                f"| {r['method']} | {r['P']} | {tps} | {pre} | {steps} | {r['status'][:40]} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["compiled", "sync"], help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="results directory (default docs/results/gpu-<name>)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        metavar="PART",
        help=f"run only these parts ({' '.join(PARTS)})",
    )
    args = parser.parse_args()
    if args.part:
        run = part_compiled if args.part == "compiled" else part_sync
        with torch.inference_mode(False):
            run(torch.device(args.device), args.tokens, Path(args.out))
        return 0
    if torch.cuda.is_available():
        device, sizes = "cuda", FULL
        name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
        out = Path(args.out or ROOT / "docs" / "results" / f"gpu-{name}")
    else:
        print("gpu-check: no CUDA device here: dry run of the check on the CPU at tiny sizes")
        device, sizes = "cpu", DRY
        out = Path(args.out or tempfile.mkdtemp(prefix="futurefill-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, command in parts(sizes, device, out):
        if args.only and name not in args.only:
            continue
        results.append(run_part(name, command, out, sizes["timeouts"][name]))
        print(
            f"gpu-check: {name}: {results[-1]['status']} in {results[-1]['seconds']} s", flush=True
        )
    summary = summarize(out, results)
    (out / "summary.md").write_text(summary)
    failed = [r["part"] for r in results if r["status"] != 0]
    if device == "cuda":
        print(summary)
    print(f"gpu-check: {'failed: ' + ' '.join(failed) if failed else 'ok'}; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
