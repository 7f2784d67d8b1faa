"""The GPU check: every CUDA path of futurefill in one run, results under docs/results/gpu-<name>/.

Run from the repository root with any python3 that has torch (no install: it imports the source
tree), ``python3 scripts/gpu_check.py`` or ``make gpu-check``. With CUDA, in about 8 minutes:

1. ``tests``: the test suite's CUDA cases (``pytest -m cuda``: the device-parametrized exactness
   tests, the compiled steps with CUDA graphs, the deamortized jobs on their side stream).
2. ``compiled``: the bundled model's shape (ConvLM, 4 STU-tensordot layers of width 128, float32)
   generating with continuous, epoched and deamortized, eager and compiled (CUDA graphs): tokens
   equal, no recompile for a second length, no CUDA graph skipped, per-token time of each.
3. ``sync``: continuous and deamortized engine steps (128 channels, jobs on the side stream) and
   a session's traced steps under ``torch.cuda.set_sync_debug_mode("error")``: any host
   synchronization inside a step is an error.
4. ``bench layer`` at L = 2^14 .. 2^20, 128 channels, naive / epoched / continuous / deamortized /
   offline; ``bench context`` for the bundled model's shape (P up to its own context, 2048)
   and for the HyenaDNA-large-1m shape at P = 2^14 .. 2^20, with naive, continuous and the
   compiled step.

Each part runs in a process of its own under a time limit; a part that fails is reported and the
others still run. A one-screen summary goes to stdout and to ``summary.md``. Without CUDA it says
so in one line, then dry-runs the same code on the CPU at tiny sizes into a temporary directory
and exits 0 when every part works (1 otherwise).
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

# Sizes with a GPU, and for the CPU dry run (same code, tiny).
FULL = {
    "layer_lengths": ["16384", "65536", "262144", "1048576"],
    "layer_budget": "25",
    "context_lens": ["256", "1024", "1792"],  # the bundled model's own context: 2048
    "context_budget": "30",
    "hyenadna_lens": ["16384", "65536", "262144", "1048576"],
    "new_tokens": "256",
    "compiled_tokens": 512,
    "sync_len": 4096,
    "timeouts": {
        "tests": 90,
        "compiled": 90,
        "sync": 30,
        "layer": 200,
        "context": 45,
        "hyenadna": 110,
    },
}
DRY = {
    "layer_lengths": ["64", "256"],
    "layer_budget": "5",
    "context_lens": ["64", "256"],
    "context_budget": "5",
    "hyenadna_lens": ["64"],
    "new_tokens": "16",
    "compiled_tokens": 24,
    "sync_len": 64,
    "timeouts": {
        "tests": 300,
        "compiled": 300,
        "sync": 60,
        "layer": 120,
        "context": 120,
        "hyenadna": 120,
    },
}


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


def bench(kind: str, args: list[str], device: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "futurefill.cli",
        "bench",
        kind,
        *args,
        "--device",
        device,
        "--no-progress",
        "--out",
        str(out),
    ]


def parts(sizes: dict, device: str, out: Path) -> list[tuple[str, list[str]]]:
    py, me = sys.executable, [sys.executable, __file__, "--device", device, "--out", str(out)]
    layer = "--channels 128 --methods naive epoched continuous deamortized offline --repeats 2"
    context = "--methods naive epoched continuous compiled compiled-deamortized --repeats 1"
    # The float32 forward itself differs from float64 by a relative 4.1e-4 at P = 2^18 on the
    # GPU, every method alike (its prefill FFT; the preset's 3e-4 was set from P <= 2^17): the
    # tolerance here is wider, and the methods' greedy tokens are compared besides.
    hyenadna = "--preset hyenadna --tol 2e-3 --methods naive continuous compiled --repeats 1"
    return [
        ("tests", [py, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider",
                   "--maxfail=20", "--no-header", "tests"]),
        ("compiled", [*me, "--part", "compiled", "--tokens", str(sizes["compiled_tokens"])]),
        ("sync", [*me, "--part", "sync", "--tokens", str(sizes["sync_len"])]),
        ("layer", bench("layer", [*layer.split(), "--lengths", *sizes["layer_lengths"],
                                  "--warmup-len", "1024", "--budget", sizes["layer_budget"]],
                        device, out / "layer")),
        ("context", bench("context", [*context.split(), "--prompt-lens", *sizes["context_lens"],
                                      "--new-tokens", sizes["new_tokens"],
                                      "--budget", sizes["context_budget"]], device,
                          out / "context")),
        ("hyenadna", bench("context", [*hyenadna.split(), "--prompt-lens",
                                       *sizes["hyenadna_lens"], "--new-tokens",
                                       sizes["new_tokens"], "--budget", sizes["context_budget"]],
                           device, out / "hyenadna")),
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
            generate(model, ids, 16, method=method, compile=compiled)  # warm-up (compiles)
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
        "device": str(device),
    }
    (out / "compiled.json").write_text(json.dumps(report, indent=1))
    bad = [r["method"] for r in rows if not (r["tokens_equal"] and r["compiled_prefix_equal"])]
    bad += [r["method"] for r in rows if r["recompiles"] or r["new_graphs"]]
    if bad or skips:
        raise SystemExit(f"compiled check failed: {bad}, cudagraph skips {skips}")


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
        logits = session.feed_traced(model, ids[:, :1], rows=[0])  # the first readies the states
        next_ids = logits[:, -1].argmax(-1, keepdim=True)
        with host_syncs_are_errors(device):
            for _ in range(min(length - 9, 300)):
                logits = session.feed_traced(model, next_ids, rows=[0])
                next_ids = logits[:, -1].argmax(-1, keepdim=True)
    results["session traced steps (eager)"] = "no host sync"
    (out / "sync.json").write_text(json.dumps(results, indent=1))


# ------------------------------------------------------------------ the summary


def quartile_ratio(row: dict) -> float | None:
    """Largest over smallest mean step time of the four quarters of positions (from the dyadic
    chunks, each counted in the quarters it overlaps)."""
    length = row["L"]
    quarters = []
    for q in range(4):
        lo, hi = q * length // 4, (q + 1) * length // 4
        time_sum = steps = 0.0
        for start, stop, mean_step in row["chunks"]:
            overlap = max(0, min(stop, hi) - max(start, lo))
            time_sum += overlap * mean_step
            steps += overlap
        quarters.append(time_sum / steps if steps else None)
    if None in quarters or min(quarters) <= 0:
        return None
    return max(quarters) / min(quarters)


def summarize(out: Path, results: list[dict]) -> str:
    lines = ["# GPU check", ""]
    machine = {}
    for report in sorted(out.glob("*/*.json")):
        machine = json.loads(report.read_text()).get("machine", machine)
    if machine:
        lines.append(
            "Machine: "
            + ", ".join(
                f"{k} {machine[k]}" for k in ("gpu", "torch", "cuda_version", "cpu") if k in machine
            )
        )
        lines.append("")
    lines += ["| part | status | seconds | last line |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['part']} | {r['status']} | {r['seconds']} | {r['last_line'][:70]} |")
    if (out / "compiled.json").exists():
        report = json.loads((out / "compiled.json").read_text())
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
    layer = out / "layer" / "layer.json"
    if layer.exists():
        lines += [
            "",
            "bench layer, 128 channels, float32, batch 1 (us per token; step latency "
            "host-side; quartile = largest / smallest quarter's mean step):",
            "",
            "| method | L | us/token | median step us | max step us | max/median | quartile |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in json.loads(layer.read_text())["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {r['method']} | {r['L']} | {r['status'][:40]} | | | | |")
                continue
            med, top = r.get("step_median_s"), r.get("step_max_s")
            ratio = quartile_ratio(r) if r.get("chunks") else None
            lines.append(
                f"| {r['method']} | {r['L']} | {r['per_token_s'] * 1e6:.1f} | "
                + (f"{med * 1e6:.1f} | {top * 1e6:.0f} | {top / med:.1f} | " if med else "| | | ")
                + (f"{ratio:.2f} |" if ratio else " |")
            )
    for name in ("context", "hyenadna"):
        path = out / name / "context.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        lines += [
            "",
            f"bench context ({name}): decode tokens/s after P prompt tokens, host time of a "
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
                steps = " / ".join(
                    f"{r[k] * 1e6:.0f}" for k in ("step_median_s", "step_p99_s", "step_max_s")
                )
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
        help="run only these parts (tests compiled sync layer context hyenadna)",
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
