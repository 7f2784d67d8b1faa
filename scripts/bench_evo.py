"""futurefill against vortex (Arc Institute's Evo 2 inference code) on the same Evo 2 weights.

One random-weight checkpoint per shape, in the real Evo 2 file format
(``tests/vortex_reference.py``), is written to a temporary directory and loaded by both: vortex's
own ``StripedHyena`` (CPU stand-ins for its Triton / flash-attention pieces) and
``futurefill.pretrained.load_pretrained``. Float32, batch 1, greedy unless a part says otherwise.
Before a part times anything it checks that futurefill's greedy tokens equal vortex's cached
tokens after a prompt of at least 8 tokens (vortex's own cache is wrong below 6), and a table
says so in capitals when they differ.

Parts (``--parts``, default all, in this order):

1. ``small``: width 256, 8 layers (the 7B layer pattern scaled: SE, MR, LI, attention, SE, MR,
   LI, SE), a 512-token prompt, then 256 tokens: prefill seconds, decode tok/s and ms/token for
   vortex's cached generation, futurefill eager ``modal`` and ``continuous``, and ``modal`` with
   ``compile=True`` (compiled once before the timing; the compile time is reported apart).
2. ``large``: width 1024, 16 layers, a 2048-token prompt: prefill (futurefill also with
   ``prefill_chunk=512``), 32 decoded tokens; and this CPU's floors: a float32 matmul's GFLOP/s
   against the forward's FLOPs, the memory bandwidth against the bytes of weights a token reads.
3. ``ragged``: the small shape, 8 prompts of 64..512 tokens, 64 new tokens each: one batched
   ``futurefill.generate(prompt_lengths=...)`` against vortex one prompt at a time.
4. ``long``: the small shape: futurefill prefill of 16,384 and 65,536 tokens (and 262,144 when
   its projection is under 5 minutes), each in a fresh child process (peak RSS), then 64
   decoded tokens, against the rate after 512 tokens; vortex at 16,384 in its own child, and at
   65,536 only if its attention scores would fit.
5. ``modal-vs-continuous``: one Hyena-LI long convolution alone (256 channels, 16 poles), the
   ``modal`` engine against the ``continuous`` engine on its taps, stepping L tokens from scratch.
6. ``profile``: the top operators of futurefill's eager decode step (small and large shapes, and
   the small compiled step when ``small`` ran), by ``torch.profiler``.

Writes ``<part>.md`` (a table each), ``summary.md`` (the headline ratios and the targets) and
``bench_evo.json`` (every sample, the machine, the load averages before and after each part and
beside each figure) into ``--out``. The ratios futurefill / vortex are the result; absolute times
hold for this machine and its load only (``uptime``'s load averages are recorded: others may
share the machine).

Usage (from the repository root, the project's venv)::

    .venv/bin/python scripts/bench_evo.py --wait-quiet 10      # everything, ~10-15 minutes
    .venv/bin/python scripts/bench_evo.py --parts long --long-limit 900   # + 262,144: ~15 min
    .venv/bin/python scripts/bench_evo.py --parts small,ragged  # merged into the folder's JSON
    .venv/bin/python scripts/bench_evo.py --quick              # ~30 s smoke run, temporary --out

A run of some parts keeps the other parts' results already in ``--out`` (``summary.md`` lists
which run and commit each part comes from). futurefill is imported from a snapshot of the
committed HEAD unless ``--worktree``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime
import gc
import io
import json
import math
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = ("src/futurefill", "tests/vortex_reference.py", "tests/fixtures/evo2_configs")


def git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def prepare_source() -> dict:
    """Which futurefill (and tests/vortex_reference.py) this run imports, put first on sys.path.

    By default the committed tree (``git archive HEAD`` of :data:`SNAPSHOT` into a temporary
    folder), so that one run, its child processes included, measures one commit whatever is
    being edited in the working tree meanwhile; ``--worktree``: the working tree as it is. Child
    processes get the parent's choice through ``BENCH_EVO_SRC``."""
    inherited = os.environ.get("BENCH_EVO_SRC")
    if inherited:
        info = json.loads(inherited)
    else:
        info = {
            "head": git("rev-parse", "HEAD"),
            "subject": git("log", "-1", "--format=%s"),
            "committed": git("log", "-1", "--format=%ci"),
            "uncommitted_in_worktree": git(
                "status", "--porcelain", "--", "src", "tests"
            ).splitlines(),
        }
        if "--worktree" in sys.argv[1:] or not info["head"]:
            info.update(mode="worktree", root=str(ROOT))
        else:
            root = Path(tempfile.mkdtemp(prefix="bench_evo_src_"))
            archive = subprocess.run(
                ["git", "archive", "HEAD", *SNAPSHOT], cwd=ROOT, capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
            atexit.register(shutil.rmtree, root, ignore_errors=True)
            info.update(mode="head", root=str(root))
        os.environ["BENCH_EVO_SRC"] = json.dumps(info)
    sys.path.insert(0, str(Path(info["root"]) / "src"))
    sys.path.insert(0, str(Path(info["root"]) / "tests"))
    return info


SOURCE = prepare_source()

import torch  # noqa: E402

import futurefill  # noqa: E402
import vortex_reference as vr  # noqa: E402
from futurefill.online import ModalFilter, make_engine  # noqa: E402
from futurefill.pretrained import load_pretrained  # noqa: E402

assert Path(futurefill.__file__).is_relative_to(SOURCE["root"]), futurefill.__file__

PARTS = ("small", "large", "ragged", "long", "modal-vs-continuous", "profile")
DEFAULT_OUT = ROOT / "docs" / "results" / "cpu-2core" / "evo"
GIB = 1024**3

# Sizes: the full run, and --quick (same code, tiny).
FULL = {
    "small": {"hidden": 256, "layers": 8, "heads": 4, "max_seqlen": 8192},
    "large": {"hidden": 1024, "layers": 16, "heads": 16, "max_seqlen": 8192},
    "small_prompt": 512,
    "small_steps": 256,
    "large_prompt": 2048,
    "large_steps": 32,
    "large_chunk": 512,
    "ragged_lengths": [64, 128, 192, 256, 320, 384, 448, 512],
    "ragged_steps": 64,
    "long_base": 512,
    "long_lengths": [16384, 65536],
    "long_longest": 262144,
    "long_max_seconds": 300.0,
    "long_chunk": 2048,
    "long_steps": 64,
    "vortex_long": [16384, 65536],
    "vortex_max_gib": 20.0,
    "mvc_lengths": [2**12, 2**14, 2**16, 2**18],
    "mvc_max_seconds": 180.0,
    "mvc_channels": 256,
    "compile": True,
    "repeats": 5,
    "budget_s": 60.0,
    "matmul": (2048, 1024, 4096),
    "bandwidth_floats": 2**28,  # 1 GiB of float32
    "profile_steps": (50, 8),
}
QUICK = {
    **FULL,
    "small": {"hidden": 64, "layers": 4, "heads": 4, "max_seqlen": 2048},
    "large": {"hidden": 128, "layers": 4, "heads": 4, "max_seqlen": 2048},
    "small_prompt": 32,
    "small_steps": 8,
    "large_prompt": 64,
    "large_steps": 4,
    "large_chunk": 16,
    "ragged_lengths": [8, 16, 24, 32],
    "ragged_steps": 8,
    "long_base": 32,
    "long_lengths": [256, 1024],
    "long_longest": 4096,
    "long_max_seconds": 5.0,
    "long_chunk": 128,
    "long_steps": 8,
    "vortex_long": [256, 2**20],
    "mvc_lengths": [2**8, 2**10],
    "mvc_max_seconds": 5.0,
    "mvc_channels": 64,
    "compile": False,
    "repeats": 1,
    "budget_s": 5.0,
    "matmul": (256, 256, 256),
    "bandwidth_floats": 2**22,
    "profile_steps": (3, 2),
}


# --------------------------------------------------------------------------- the machine


def load_avg() -> list[float]:
    """``uptime``'s three load averages (1, 5, 15 minutes)."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    mem = next(
        (
            line.split()[1]
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        "0",
    )
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024**2, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "vortex": _vortex_version(),
    }


def _vortex_version() -> str:
    try:
        from importlib.metadata import version

        return version("vtx")
    except Exception:
        return "unknown"


def proc_status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- timing

LOAD_NOTE = (
    "Load: `uptime`'s 1-minute load average over the samples (this benchmark itself counts "
    "1-2 of it); others: the CPU cores other processes kept busy during the samples "
    "(/proc/stat less this process: 0 none, 2 both cores of this 2-core machine)."
)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def repeat(fn: Callable[[], dict], n: int, budget_s: float, min_n: int = 1) -> list[dict]:
    """Run ``fn`` (returning a dict of figures) up to ``n`` times: at least ``min(min_n, n)``,
    more while the total stays within ``budget_s`` (a run's cost projected from the slowest so
    far). Each sample gets the load averages at its start and end."""
    samples: list[dict] = []
    min_n = min(min_n, n)
    spent = 0.0
    while len(samples) < n:
        if len(samples) >= min_n and spent + max(s["_wall"] for s in samples) > budget_s:
            break
        waited = quiet_wait(QUIET_S[0])
        before, jiffies = load_avg(), cpu_jiffies()
        t0 = time.perf_counter()
        sample = fn()
        sample["_wall"] = time.perf_counter() - t0
        sample["load_before"], sample["load_after"] = before, load_avg()
        sample["others_cores"] = others_cores(jiffies, cpu_jiffies())
        sample["waited_s"] = waited
        spent += sample["_wall"]
        samples.append(sample)
        gc.collect()
    return samples


def best(samples: list[dict], key: str) -> float:
    return min(s[key] for s in samples)


def loads_text(samples: list[dict]) -> str:
    """The 1-minute load averages seen over the samples (min-max), and the CPU cores other
    processes kept busy during them (min-max)."""
    values = [s["load_before"][0] for s in samples] + [s["load_after"][0] for s in samples]
    lo, hi = min(values), max(values)
    text = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
    others = [s["others_cores"] for s in samples if "others_cores" in s]
    if others:
        a, b = min(others), max(others)
        text += f"; others {a:.2f}" if a == b else f"; others {a:.2f}-{b:.2f}"
    return text


def cpu_jiffies() -> tuple[int, int, int]:
    """(all CPUs' jiffies, their busy jiffies, this process's and its reaped children's)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(x) for x in fields[:8]]
    total = sum(values)
    busy = total - values[3] - values[4]  # less idle and iowait
    stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    own = sum(int(x) for x in stat[11:15])  # utime, stime, cutime, cstime
    return total, busy, own


def others_cores(before: tuple[int, int, int], after: tuple[int, int, int]) -> float:
    """CPU cores other processes kept busy between two :func:`cpu_jiffies` readings."""
    total = after[0] - before[0]
    if total <= 0:
        return 0.0
    other = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, other / total * (os.cpu_count() or 1))


#: --wait-quiet: seconds each sample may wait for the machine to be quiet (0: never waits)
QUIET_S = [0.0]


def quiet_wait(max_s: float) -> float:
    """Wait (up to ``max_s``) until no other process is runnable (``procs_running`` of
    /proc/stat, which counts this one, is 1 in three samples 0.5 s apart); the seconds waited."""
    if max_s <= 0:
        return 0.0
    t0 = time.perf_counter()
    calm = 0
    while time.perf_counter() - t0 < max_s:
        running = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("procs_running")
        )
        calm = calm + 1 if running <= 1 else 0
        if calm >= 3:
            break
        time.sleep(0.5)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- models


class Bench:
    """The run's state: sizes, checkpoints and loaded models (per shape), results."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.sizes = QUICK if args.quick else FULL
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_evo_ckpt_"))
        atexit.register(shutil.rmtree, self.tmp, ignore_errors=True)
        self.checkpoints: dict[str, Path] = {}
        self.ff_models: dict[str, torch.nn.Module] = {}
        self.results: dict[str, Any] = {}
        self.compiled_small = False

    def config(self, shape: str, max_seqlen: int | None = None) -> dict:
        s = self.sizes[shape]
        return vr.scaled_config(
            "7b",
            hidden_size=s["hidden"],
            num_layers=s["layers"],
            num_heads=s["heads"],
            max_seqlen=max_seqlen or s["max_seqlen"],
        )

    def checkpoint(self, shape: str, max_seqlen: int | None = None) -> Path:
        """The checkpoint directory of ``shape`` (seed 0: same weights whatever max_seqlen)."""
        key = f"{shape}-{max_seqlen}"
        if key not in self.checkpoints:
            directory = self.tmp / key
            vr.write_checkpoint(directory, self.config(shape, max_seqlen), seed=self.args.seed)
            self.checkpoints[key] = directory
        return self.checkpoints[key]

    def ff(self, shape: str) -> torch.nn.Module:
        if shape not in self.ff_models:
            model = load_pretrained(self.checkpoint(shape)).eval()
            assert {p.dtype for p in model.parameters()} == {torch.float32}
            self.ff_models[shape] = model
        return self.ff_models[shape]

    def vortex(self, shape: str) -> torch.nn.Module:
        with quiet_output():
            return vr.load_vortex(self.checkpoint(shape), dtype=torch.float32)

    def drop(self, shape: str) -> None:
        self.ff_models.pop(shape, None)
        gc.collect()


@contextlib.contextmanager
def quiet_output():
    """vortex prints (``Initializing inference params ...``) and shows progress bars."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def random_ids(length: int, vocab: int, seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def vortex_run(model, prompt: torch.Tensor, steps: int) -> dict:
    """vortex's own cached greedy generation (``Generator.generate``, top_k=1) of ``steps + 1``
    tokens: ``prefill_s`` from the call to the end of the prompt's forward (inference params
    allocated, the prompt's pass), ``decode_s`` for the ``steps`` one-token forwards after it
    (each with its sampling), timed by vortex's own ``token_callback``."""
    from vortex.model.generation import Generator
    from vortex.model.tokenizer import CharLevelTokenizer

    vocab = model.embedding_layer.weight.shape[0]
    generator = Generator(model, CharLevelTokenizer(vocab), top_k=1, top_p=1.0, temperature=1.0)
    stamps: list[float] = []
    with quiet_output():
        t0 = time.perf_counter()
        tokens, _, _ = generator.generate(
            device="cpu",
            input_ids=prompt,
            num_tokens=steps + 1,
            cached_generation=True,
            print_generation=False,
            verbose=False,
            stop_at_eos=False,
            token_callback=lambda i: stamps.append(time.perf_counter()),
        )
    return {
        "prefill_s": stamps[0] - t0,
        "decode_s": stamps[steps] - stamps[0] if steps else 0.0,
        "tokens": tokens[0].tolist(),
    }


def ff_run(
    model,
    prompt: torch.Tensor,
    steps: int,
    method: str = "modal",
    compile: bool = False,
    prefill_chunk: int | None = None,
) -> dict:
    """futurefill's :class:`~futurefill.Decoder`, greedy, ``steps + 1`` tokens: ``prefill_s``
    from the decoder's construction to the prompt's last logits, ``decode_s`` for the ``steps``
    one-token steps after it (each feeding back the argmax)."""
    length = prompt.shape[1]
    t0 = time.perf_counter()
    with futurefill.Decoder(
        model,
        batch_size=1,
        max_len=length + steps,
        method=method,
        compile=compile,
        prefill_chunk=prefill_chunk,
    ) as dec:
        out = dec.prefill(prompt)
        t1 = time.perf_counter()
        tokens = [out.greedy]
        for _ in range(steps):
            out = dec.step(out.greedy)
            tokens.append(out.greedy)
        t2 = time.perf_counter()
        nbytes = dec.nbytes
    return {
        "prefill_s": t1 - t0,
        "decode_s": t2 - t1,
        "tokens": torch.cat(tokens).tolist(),
        "state_bytes": nbytes,
    }


def token_check(reference: list[int], ours: list[int]) -> dict:
    same = reference == ours
    first = next((i for i, (a, b) in enumerate(zip(reference, ours, strict=False)) if a != b), None)
    return {"equal": same, "tokens": len(reference), "first_difference": first}


def token_checks(runs: dict[str, list[dict]], reference: list[int]) -> dict[str, dict]:
    """Every futurefill run's first tokens against vortex's (``reference``)."""
    return {
        name: token_check(reference, samples[0]["tokens"])
        for name, samples in runs.items()
        if name != "vortex cached"
    }


def against_vortex(runs: dict[str, list[dict]], steps: int) -> dict[str, dict]:
    """Each run's best prefill and decode, and its speedups over ``runs["vortex cached"]``."""
    v = runs["vortex cached"]
    v_pre, v_dec = best(v, "prefill_s"), best(v, "decode_s") / steps
    figures = {}
    for name, samples in runs.items():
        pre, dec = best(samples, "prefill_s"), best(samples, "decode_s") / steps
        figures[name] = {
            "prefill_s": pre,
            "decode_ms_per_token": dec * 1e3,
            "decode_tok_s": 1 / dec,
            "prefill_speedup_vs_vortex": v_pre / pre,
            "decode_speedup_vs_vortex": v_dec / dec,
            "n": len(samples),
            "samples": [{k: x for k, x in smp.items() if k != "tokens"} for smp in samples],
        }
    return figures


def check_line(checks: dict[str, dict], prompt_len: int) -> str:
    bad = {k: v for k, v in checks.items() if not v["equal"]}
    if not bad:
        names = ", ".join(checks)
        n = next(iter(checks.values()))["tokens"] if checks else 0
        return (
            f"Token check: futurefill's greedy tokens ({names}) equal vortex's cached tokens, "
            f"{n} tokens after a {prompt_len}-token prompt."
        )
    lines = [
        f"**WARNING: TOKENS DIFFER FROM VORTEX'S CACHED DECODING ({prompt_len}-token prompt)**:"
    ]
    for name, c in bad.items():
        lines.append(
            f"**{name}: first difference at token {c['first_difference']} of {c['tokens']}**"
        )
    return "\n".join(lines)


def fmt(x: float, digits: int = 3) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{max(0, digits - 1 - math.floor(math.log10(abs(x))))}f}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def target(name: str, met: bool, detail: str) -> dict:
    return {"target": name, "met": bool(met), "detail": detail}


def targets_text(targets: list[dict]) -> str:
    return "\n".join(
        f"- [{'x' if t['met'] else ' '}] {t['target']}: **{'met' if t['met'] else 'NOT met'}** "
        f"({t['detail']})"
        for t in targets
    )


# --------------------------------------------------------------------------- part 1: small


def part_small(b: Bench) -> dict:
    s = b.sizes
    P, steps, N, budget = s["small_prompt"], s["small_steps"], s["repeats"], s["budget_s"]
    model = b.ff("small")
    vm = b.vortex("small")
    prompt = random_ids(P, model.config.vocab_size, seed=1)
    out: dict[str, Any] = {
        "shape": dict(s["small"]),
        "params": params(model),
        "prompt": P,
        "steps": steps,
    }
    runs: dict[str, list[dict]] = {}
    runs["vortex cached"] = repeat(lambda: vortex_run(vm, prompt, steps), N, budget, 3)
    reference = runs["vortex cached"][0]["tokens"]
    for method in ("modal", "continuous"):
        runs[f"futurefill eager {method}"] = repeat(
            lambda m=method: ff_run(model, prompt, steps, m), N, budget, 3
        )
    if s["compile"]:
        # the warm-up has the timed runs' max_len: the graph is specialised to the cache sizes
        compile_s, _ = timed(lambda: ff_run(model, prompt, steps, "modal", compile=True))
        out["compile_s"] = compile_s
        b.compiled_small = True
        runs["futurefill compiled modal"] = repeat(
            lambda: ff_run(model, prompt, steps, "modal", compile=True), N, budget, 3
        )
    out["token_check"] = checks = token_checks(runs, reference)
    figures = out["figures"] = against_vortex(runs, steps)
    v_dec = figures["vortex cached"]["decode_ms_per_token"] / 1e3
    rows = [
        [
            name,
            fmt(f["prefill_s"]),
            f"**{f['prefill_speedup_vs_vortex']:.2f}x**",
            fmt(f["decode_ms_per_token"]),
            fmt(f["decode_tok_s"]),
            f"**{f['decode_speedup_vs_vortex']:.2f}x**",
            f["n"],
            loads_text(runs[name]),
        ]
        for name, f in figures.items()
    ]
    # the weights' reading floor: a sum over a tensor of the weights' size (26 MB here: it may
    # stay in the last-level cache, as the weights do between steps)
    wbytes = param_bytes(model)
    x = torch.ones(wbytes // 4)
    x.sum()
    read = min(timed(lambda: x.sum())[0] for _ in range(20))
    out["weight_bytes"], out["weight_floor_s"] = wbytes, read
    out["weight_floor_speedup_bound"] = v_dec / read
    eager = figures["futurefill eager modal"]["decode_speedup_vs_vortex"]
    best_eager = max(
        figures[f"futurefill eager {m}"]["decode_speedup_vs_vortex"]
        for m in ("modal", "continuous")
    )
    targets = [
        target(
            "small decode >= 5x vortex, eager",
            best_eager >= 5,
            f"eager modal {eager:.2f}x, eager continuous "
            f"{figures['futurefill eager continuous']['decode_speedup_vs_vortex']:.2f}x",
        )
    ]
    if "futurefill compiled modal" in figures:
        comp = figures["futurefill compiled modal"]["decode_speedup_vs_vortex"]
        targets.append(
            target(
                "small decode compiled > eager (and >= 5x vortex)",
                comp > best_eager and comp >= 5,
                f"compiled modal {comp:.2f}x vortex vs best eager {best_eager:.2f}x",
            )
        )
    out["targets"] = targets
    vm = None  # free it
    md = [
        f"## small: width {s['small']['hidden']}, {s['small']['layers']} layers "
        f"({out['params'] / 1e6:.2f}M parameters), {P}-token prompt, {steps} decoded tokens",
        "",
        table(
            [
                "run",
                "prefill s",
                "prefill speedup vs vortex",
                "decode ms/token",
                "decode tok/s",
                "decode speedup vs vortex",
                "N (best of)",
                "load 1m; others' cores",
            ],
            rows,
        ),
        "",
        check_line(checks, P),
        "",
    ]
    if "compile_s" in out:
        md.append(
            f"Compile: one warm-up run before the timed ones, the same prompt and steps (the "
            f"graph is specialised to the decoder's max_len: another max_len compiles again), "
            f"{out['compile_s']:.1f} s including its own prefill and decode; not in the timings."
        )
        md.append("")
    md += [
        f"Weight-reading floor: the sum of a float32 tensor of the weights' size "
        f"({wbytes / 1e6:.1f} MB, best of 20; small enough to stay in this CPU's last-level "
        f"cache) takes {read * 1e3:.2f} ms: a decoded token cannot take less, so no batch-1 "
        f"float32 decode here can beat vortex's {v_dec * 1e3:.2f} ms/token by more than "
        f"**{v_dec / read:.1f}x**.",
        "",
        "Prefill: from the call (vortex: `Generator.generate`; futurefill: `Decoder(...)`) to the "
        "prompt's last logits (cache allocation included). Decode: the steps after it, each "
        "feeding back the argmax; best of N for each figure separately. Speedup = vortex's time / "
        "futurefill's.",
        "",
        targets_text(targets),
    ]
    out["markdown"] = "\n".join(md)
    return out


# --------------------------------------------------------------------------- part 2: large


def measure_floors(b: Bench) -> dict:
    s = b.sizes
    m, k, n = s["matmul"]
    a, w = torch.randn(m, k), torch.randn(k, n)
    a @ w  # warm
    mm = min(timed(lambda: a @ w)[0] for _ in range(5))
    gflops = 2 * m * k * n / mm / 1e9
    x = torch.ones(s["bandwidth_floats"])
    y = torch.empty_like(x)
    x.sum()
    read = min(timed(lambda: x.sum())[0] for _ in range(5))
    copy = min(timed(lambda: y.copy_(x))[0] for _ in range(5))
    nbytes = x.numel() * x.element_size()
    return {
        "matmul": f"({m}x{k}) @ ({k}x{n}) float32, best of 5",
        "matmul_s": mm,
        "gflops": gflops,
        "bandwidth_tensor_bytes": nbytes,
        "read_s": read,
        "read_gb_s": nbytes / read / 1e9,
        "copy_s": copy,
        "copy_gb_s": 2 * nbytes / copy / 1e9,
    }


def forward_flops(config, tokens: int, n_params: int) -> dict:
    """2 x parameters x tokens (every weight one multiply-add per token; the tied embedding counted
    once, as the unembedding matmul) + attention 2 x L^2 x d per attention layer (QK^T and AV over
    the causal half, Kaplan et al.'s count); the convolutions (< 1% here) are left out."""
    dense = 2 * n_params * tokens
    attention = 2 * len(config.attn_layer_idxs) * tokens**2 * config.hidden_size
    return {"dense": dense, "attention": attention, "total": dense + attention}


def part_large(b: Bench) -> dict:
    s = b.sizes
    P, steps, chunk = s["large_prompt"], s["large_steps"], s["large_chunk"]
    N, budget = min(3, s["repeats"]), s["budget_s"] * 2
    floors = measure_floors(b)
    model = b.ff("large")
    vm = b.vortex("large")
    prompt = random_ids(P, model.config.vocab_size, seed=2)
    n_params = params(model)
    flops = forward_flops(model.config, P, n_params)
    wbytes = param_bytes(model)
    out: dict[str, Any] = {
        "shape": dict(s["large"]),
        "params": n_params,
        "vortex_params": params(vm),
        "prompt": P,
        "steps": steps,
        "floors": floors,
        "flops": flops,
        "weight_bytes": wbytes,
    }
    matmul_floor = flops["total"] / (floors["gflops"] * 1e9)
    weight_floor = wbytes / (floors["read_gb_s"] * 1e9)
    out["matmul_floor_s"], out["weight_floor_s"] = matmul_floor, weight_floor
    runs: dict[str, list[dict]] = {}
    runs["vortex cached"] = repeat(lambda: vortex_run(vm, prompt, steps), N, budget, 2)
    reference = runs["vortex cached"][0]["tokens"]
    vm = None  # free it
    gc.collect()
    runs["futurefill eager modal"] = repeat(lambda: ff_run(model, prompt, steps), N, budget, 2)
    runs[f"futurefill eager modal, prefill_chunk={chunk}"] = repeat(
        lambda: ff_run(model, prompt, steps, prefill_chunk=chunk), N, budget, 2
    )
    if s["compile"]:
        compile_s, _ = timed(lambda: ff_run(model, prompt, steps, "modal", compile=True))
        out["compile_s"] = compile_s
        runs["futurefill compiled modal"] = repeat(
            lambda: ff_run(model, prompt, steps, "modal", compile=True), N, budget, 2
        )
    out["token_check"] = checks = token_checks(runs, reference)
    figures = out["figures"] = against_vortex(runs, steps)
    for f in figures.values():
        f["prefill_over_matmul_floor"] = f["prefill_s"] / matmul_floor
        f["decode_over_weight_floor"] = f["decode_ms_per_token"] / 1e3 / weight_floor
    rows = [
        [
            name,
            fmt(f["prefill_s"]),
            f"{f['prefill_over_matmul_floor']:.2f}x",
            f"**{f['prefill_speedup_vs_vortex']:.2f}x**",
            fmt(f["decode_ms_per_token"]),
            fmt(f["decode_tok_s"]),
            f"{f['decode_over_weight_floor']:.2f}x",
            f"**{f['decode_speedup_vs_vortex']:.2f}x**",
            f["n"],
            loads_text(runs[name]),
        ]
        for name, f in figures.items()
    ]
    ff_names = [n for n in figures if n != "vortex cached"]
    pre_best = min(ff_names, key=lambda n: figures[n]["prefill_s"])
    dec_best = min(ff_names, key=lambda n: figures[n]["decode_ms_per_token"])
    eager = figures["futurefill eager modal"]
    fb = figures[dec_best]
    pb = figures[pre_best]
    targets = [
        target(
            "large decode within 1.2x of the weight-reading floor",
            fb["decode_over_weight_floor"] <= 1.2,
            f"best: {dec_best} {fb['decode_over_weight_floor']:.2f}x the floor "
            f"({fb['decode_ms_per_token']:.0f} vs {weight_floor * 1e3:.0f} ms); eager modal "
            f"{eager['decode_over_weight_floor']:.2f}x",
        ),
        target(
            "large decode not slower than vortex",
            fb["decode_speedup_vs_vortex"] >= 1,
            f"best: {dec_best} {fb['decode_speedup_vs_vortex']:.2f}x vortex; eager modal "
            f"{eager['decode_speedup_vs_vortex']:.2f}x",
        ),
        target(
            f"{P}-token prefill within 1.5x of the matmul floor",
            pb["prefill_over_matmul_floor"] <= 1.5,
            f"best: {pre_best} {pb['prefill_over_matmul_floor']:.2f}x the floor "
            f"({pb['prefill_s']:.2f} vs {matmul_floor:.2f} s)",
        ),
        target(
            f"{P}-token prefill >= 2x faster than vortex",
            pb["prefill_speedup_vs_vortex"] >= 2,
            f"best: {pre_best} {pb['prefill_speedup_vs_vortex']:.2f}x",
        ),
    ]
    out["targets"] = targets
    md = [
        f"## large: width {s['large']['hidden']}, {s['large']['layers']} layers "
        f"({n_params / 1e6:.1f}M parameters, {wbytes / 1e6:.0f} MB of float32 weights), "
        f"{P}-token prompt, {steps} decoded tokens",
        "",
        table(
            [
                "run",
                "prefill s",
                "prefill / matmul floor",
                "prefill speedup vs vortex",
                "decode ms/token",
                "decode tok/s",
                "decode / weight floor",
                "decode speedup vs vortex",
                "N (best of)",
                "load 1m; others' cores",
            ],
            rows,
        ),
        "",
        check_line(checks, P),
        "",
        "Floors (this CPU, this load):",
        "",
        f"- matmul: {floors['matmul']}: {floors['matmul_s'] * 1e3:.1f} ms, "
        f"**{floors['gflops']:.0f} GFLOP/s**. Forward FLOPs for {P} tokens: "
        f"2 x {n_params / 1e6:.1f}M parameters x {P} = {flops['dense'] / 1e9:.0f} GFLOP "
        "+ attention "
        f"2 x {len(model.config.attn_layer_idxs)} layers x {P}^2 x {model.config.hidden_size} = "
        f"{flops['attention'] / 1e9:.1f} GFLOP = {flops['total'] / 1e9:.0f} GFLOP -> "
        f"**matmul floor {matmul_floor:.2f} s**.",
        f"- memory: sum of a {floors['bandwidth_tensor_bytes'] / GIB:.0f} GiB float32 tensor "
        f"(best of 5) **{floors['read_gb_s']:.1f} GB/s** read (a copy: "
        f"{floors['copy_gb_s']:.1f} GB/s read + write). Weights {wbytes / 1e6:.0f} MB -> "
        f"**weight-reading floor {weight_floor * 1e3:.0f} ms per decoded token** "
        f"({1 / weight_floor:.1f} tok/s).",
        "",
    ]
    if "compile_s" in out:
        md += [
            f"Compile: one warm-up run before the timed ones (same prompt and steps), "
            f"{out['compile_s']:.1f} s including its own prefill and decode; not in the timings.",
            "",
        ]
    md += [
        f"vortex's model has {out['vortex_params'] / 1e6:.1f}M parameters (same weights; "
        "futurefill's count differs by its repeated FIR taps and buffers). Decode after the "
        "unchunked prefill; best of N for each figure separately.",
        "",
        targets_text(targets),
    ]
    out["markdown"] = "\n".join(md)
    return out


# --------------------------------------------------------------------------- part 3: ragged


def part_ragged(b: Bench) -> dict:
    s = b.sizes
    lengths, steps, budget = s["ragged_lengths"], s["ragged_steps"], s["budget_s"]
    model = b.ff("small")
    vm = b.vortex("small")
    vocab = model.config.vocab_size
    prompts = [random_ids(n, vocab, seed=100 + i)[0] for i, n in enumerate(lengths)]
    padded = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, p in enumerate(prompts):
        padded[i, : len(p)] = p

    def vortex_all() -> dict:
        tokens, prefill = [], 0.0
        for p in prompts:
            r = vortex_run(vm, p[None], steps - 1)
            tokens.append(r["tokens"])
            prefill += r["prefill_s"]
        return {"tokens": tokens, "prefill_s": prefill}

    def ff_batched(compile: bool = False) -> dict:
        ids = futurefill.generate(
            model,
            padded,
            steps,
            method="modal",
            prompt_lengths=lengths,
            compile=compile,
        )
        return {"tokens": ids.tolist()}

    runs: dict[str, list[dict]] = {}
    N = min(3, s["repeats"])
    runs["vortex, one prompt at a time"] = repeat(vortex_all, N, budget, 3)
    runs["futurefill generate, one batch (modal)"] = repeat(ff_batched, N, budget, 3)
    out: dict[str, Any] = {"lengths": lengths, "new_tokens": steps}
    if s["compile"]:
        compile_s, _ = timed(lambda: ff_batched(compile=True))
        out["compile_s"] = compile_s
        runs["futurefill generate, one batch (modal, compile=True)"] = repeat(
            lambda: ff_batched(True), N, budget, 3
        )
    vm = None  # free it
    reference = runs["vortex, one prompt at a time"][0]["tokens"]
    checks = {}
    for name, smp in runs.items():
        if name.startswith("futurefill"):
            rows_equal = [r == o for r, o in zip(reference, smp[0]["tokens"], strict=True)]
            checks[name] = {
                "equal": all(rows_equal),
                "tokens": steps,
                "rows_equal": rows_equal,
                "first_difference": None if all(rows_equal) else rows_equal.index(False),
            }
    out["token_check"] = checks
    v_total = best(runs["vortex, one prompt at a time"], "_wall")
    rows, figures = [], {}
    for name, smp in runs.items():
        total = best(smp, "_wall")
        figures[name] = {
            "total_s": total,
            "speedup_vs_vortex": v_total / total,
            "tokens_per_s": len(lengths) * steps / total,
            "n": len(smp),
            "samples": [{k: x for k, x in q.items() if k != "tokens"} for q in smp],
        }
        rows.append(
            [
                name,
                fmt(total),
                fmt(len(lengths) * steps / total),
                f"**{v_total / total:.2f}x**",
                len(smp),
                loads_text(smp),
            ]
        )
    out["figures"] = figures
    ff_best = max(
        (n for n in figures if n.startswith("futurefill")),
        key=lambda n: figures[n]["speedup_vs_vortex"],
    )
    eager = figures["futurefill generate, one batch (modal)"]["speedup_vs_vortex"]
    targets = [
        target(
            "ragged batch >= 3x vortex one at a time",
            eager >= 3,
            f"eager {eager:.2f}x; best {ff_best} {figures[ff_best]['speedup_vs_vortex']:.2f}x",
        )
    ]
    out["targets"] = targets
    bad = [n for n, c in checks.items() if not c["equal"]]
    check = (
        f"Token check: every row's {steps} tokens equal vortex's cached tokens for that prompt "
        f"alone ({', '.join(checks)})."
        if not bad
        else "\n".join(
            f"**WARNING: TOKENS DIFFER FROM VORTEX'S in {n}: rows equal {checks[n]['rows_equal']}**"
            for n in bad
        )
    )
    md = [
        f"## ragged: the small shape, {len(lengths)} prompts of {', '.join(map(str, lengths))} "
        f"tokens, {steps} new tokens each (greedy)",
        "",
        table(
            [
                "run",
                "total s",
                "new tok/s",
                "speedup vs vortex",
                "N (best of)",
                "load 1m; others' cores",
            ],
            rows,
        ),
        "",
        check,
        "",
        "vortex: `Generator.generate` (cached) once per prompt, one after the other (it cannot "
        "batch prompts of different lengths). futurefill: one `futurefill.generate(..., "
        "prompt_lengths=...)` call over the right-padded batch (each prompt prefilled in its own "
        "row, then every row stepped together, each at its own position).",
    ]
    if "compile_s" in out:
        md += [
            "",
            f"Compile time for batch {len(lengths)} (excluded: one warm-up call): "
            f"{out['compile_s']:.1f} s.",
        ]
    md += ["", targets_text(targets)]
    out["markdown"] = "\n".join(md)
    return out


# --------------------------------------------------------------------------- part 4: long


def child_long(spec: dict) -> dict:
    """In a fresh process: one prefill of ``length`` tokens and ``steps`` decoded tokens, peak
    RSS: the process's VmHWM (its own high-water mark: ``ru_maxrss`` would not do, Linux keeps
    the forking parent's there across exec), read after the model's loading and again at the
    end after a reset (``clear_refs``) in between; the process's peak is the larger."""
    torch.set_num_threads(spec["threads"])
    directory, length, steps = Path(spec["checkpoint"]), spec["length"], spec["steps"]
    if spec["who"] == "futurefill":
        model = load_pretrained(directory)
        vocab = model.config.vocab_size
    else:
        with quiet_output():
            model = vr.load_vortex(directory, dtype=torch.float32)
        vocab = model.embedding_layer.weight.shape[0]
    prompt = random_ids(length, vocab, seed=3)
    gc.collect()
    rss_loaded = proc_status("VmRSS")
    peak_loading = proc_status("VmHWM")
    reset = reset_peak_rss()
    if spec["who"] == "futurefill":
        r = ff_run(model, prompt, steps, "modal", prefill_chunk=spec["chunk"])
    else:
        r = vortex_run(model, prompt, steps)
    r.pop("tokens")
    r.update(
        length=length,
        rss_after_load=rss_loaded,
        peak_rss_since_load=proc_status("VmHWM") - rss_loaded if reset else None,
        peak_rss=max(peak_loading, proc_status("VmHWM")),
        peak_rss_loading=peak_loading,
        ru_maxrss_with_parent=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        decode_tok_s=steps / r["decode_s"],
    )
    return r


def run_child(args: argparse.Namespace, spec: dict, timeout: float) -> dict:
    spec = {**spec, "threads": args.threads}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    waited = quiet_wait(QUIET_S[0])
    before, jiffies = load_avg(), cpu_jiffies()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "load_before": before}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' / '.join(tail)}", "load_before": before}
    result = json.loads(lines[-1])
    result.update(
        _wall=wall,
        load_before=before,
        load_after=load_avg(),
        others_cores=others_cores(jiffies, cpu_jiffies()),
        waited_s=waited,
    )
    return result


def part_long(b: Bench) -> dict:
    s = b.sizes
    steps, chunk = s["long_steps"], s["long_chunk"]
    longest = s["long_longest"]
    directory = b.checkpoint("small", max_seqlen=longest + 4096)
    small = b.ff("small")
    heads, hidden = small.config.num_attention_heads, small.config.hidden_size
    n_attn = len(small.config.attn_layer_idxs)
    out: dict[str, Any] = {"chunk": chunk, "steps": steps, "cases": {}}
    cases = out["cases"]

    def ff_case(length: int, n: int, budget: float, timeout: float) -> dict:
        spec = {
            "who": "futurefill",
            "checkpoint": str(directory),
            "length": length,
            "steps": steps,
            "chunk": chunk if length > chunk else None,
        }
        samples = []
        while len(samples) < n:
            r = run_child(b.args, spec, timeout)
            if "error" in r:
                return {"error": r["error"], "samples": samples}
            samples.append(r)
            if sum(x["_wall"] for x in samples) + r["_wall"] > budget:
                break
        return summarize_long(samples)

    base = s["long_base"]
    n = min(3, s["repeats"])
    cases[f"futurefill {base}"] = ff_case(base, n, s["budget_s"], 600)
    for length in s["long_lengths"]:
        cases[f"futurefill {length}"] = ff_case(length, n, s["budget_s"], 600)
    # the longest: only when a fit t = a L + c L^2 through the two measured lengths says < limit
    (l1, l2) = s["long_lengths"][-2:]
    t1 = cases[f"futurefill {l1}"].get("prefill_s")
    t2 = cases[f"futurefill {l2}"].get("prefill_s")
    if t1 and t2:
        c = max((t2 / l2 - t1 / l1) / (l2 - l1), 0.0)
        a = max(t1 / l1 - c * l1, 0.0)
        projected = a * longest + c * longest**2
    else:
        projected = math.inf
    out["longest_projected_prefill_s"] = projected
    limit = b.args.long_limit if b.args.long_limit is not None else s["long_max_seconds"]
    out["longest_limit_s"] = limit
    if projected <= limit:
        cases[f"futurefill {longest}"] = ff_case(longest, 1, 0, 3 * projected + 120)
    else:
        cases[f"futurefill {longest}"] = {
            "not_run": f"projected prefill {projected:.0f} s > {limit:.0f} s "
            f"(t = a L + c L^2 through {l1} and {l2})"
        }
    # vortex: its cached prefill materialises the (heads, L, L) float32 scores of each
    # attention layer (einsum, masked_fill and softmax: about 3 of them alive at once)
    for length in s["vortex_long"]:
        scores = heads * length**2 * 4
        need = 3 * scores
        key = f"vortex {length}"
        if need / GIB > s["vortex_max_gib"]:
            cases[key] = {
                "not_run": f"would need {scores / GIB:.0f} GiB for one (heads={heads}, L, L) "
                f"float32 score tensor ({need / GIB:.0f} GiB with the masked and softmaxed "
                f"copies) > {s['vortex_max_gib']:.0f} GiB"
            }
            continue
        spec = {"who": "vortex", "checkpoint": str(directory), "length": length, "steps": steps}
        samples = []
        while len(samples) < n:
            r = run_child(b.args, spec, 600)
            if "error" in r:
                cases[key] = {"error": r["error"], "samples": samples}
                break
            samples.append(r)
            if sum(x["_wall"] for x in samples) + r["_wall"] > s["budget_s"]:
                break
        if samples and key not in cases:
            cases[key] = summarize_long(samples)
            cases[key]["estimated_scores_gib"] = scores / GIB
    # table
    base_rate = cases[f"futurefill {base}"].get("decode_tok_s")
    rows = []
    for name, c in cases.items():
        if "not_run" in c or "error" in c:
            rows.append([name, "-", "-", "-", "-", "-", "-", c.get("not_run") or c["error"]])
            continue
        rate = c["decode_tok_s"]
        rel = (
            f"{rate / base_rate:.2f}x"
            if name.startswith("futurefill") and base_rate
            else f"{rate / base_rate:.2f}x of futurefill's"
        )
        rows.append(
            [
                name,
                fmt(c["prefill_s"]),
                f"{c['peak_rss'] / GIB:.2f}",
                f"{c['peak_rss_since_load'] / GIB:.2f}" if c.get("peak_rss_since_load") else "-",
                f"{c['state_bytes'] / 2**20:.0f}" if c.get("state_bytes") else "-",
                fmt(rate),
                rel,
                f"N={c['n']}, load {c['loads']}",
            ]
        )
    # targets
    targets = []
    mid = s["long_lengths"][-1]
    c_mid = cases.get(f"futurefill {mid}", {})
    if "peak_rss" in c_mid:
        targets.append(
            target(
                f"futurefill {mid} prefill within 2 GB (peak RSS)",
                c_mid["peak_rss"] <= 2e9,
                f"peak RSS {c_mid['peak_rss'] / 1e9:.2f} GB for the whole process "
                f"({(c_mid.get('peak_rss_since_load') or 0) / 1e9:.2f} GB added after the "
                "model's loading)",
            )
        )
    c_long = cases.get(f"futurefill {longest}", {})
    kv = 2 * n_attn * (longest + steps) * hidden * 4
    out["longest_kv_cache_bytes"] = kv
    if "peak_rss" in c_long:
        targets.append(
            target(
                f"futurefill {longest} within 2 GB + attention cache ({kv / 1e9:.2f} GB)",
                c_long["peak_rss"] <= 2e9 + kv,
                f"peak RSS {c_long['peak_rss'] / 1e9:.2f} GB",
            )
        )
    else:
        targets.append(
            target(
                f"futurefill {longest} within 2 GB + attention cache",
                False,
                "not measured: " + (c_long.get("not_run") or c_long.get("error", "?")),
            )
        )
    for length in [*s["long_lengths"], longest]:
        c = cases.get(f"futurefill {length}", {})
        if "decode_tok_s" in c and base_rate:
            targets.append(
                target(
                    f"decode rate after {length} within 2x of after {base}",
                    c["decode_tok_s"] * 2 >= base_rate,
                    f"{c['decode_tok_s']:.1f} vs {base_rate:.1f} tok/s "
                    f"({base_rate / c['decode_tok_s']:.2f}x slower)",
                )
            )
    out["targets"] = targets
    md = [
        f"## long: the small shape, prefill of long prompts (futurefill: method modal, "
        f"prefill_chunk={chunk}), then {steps} decoded tokens; each case a fresh process",
        "",
        table(
            [
                "case",
                "prefill s",
                "peak RSS GiB (process)",
                "peak RSS GiB added after load",
                "decoding state MiB",
                "decode tok/s",
                f"decode rate vs futurefill after {base}",
                "notes",
            ],
            rows,
        ),
        "",
        "Peak RSS: the process's high-water mark (VmHWM: python, torch, vortex or "
        "futurefill and the model included), and the high-water mark reset after the model's "
        "loading (`/proc/self/clear_refs`) less the RSS then: what the prefill and decode "
        "themselves added on top of the loaded model. Decoding state: `Decoder.nbytes` "
        "(engines, FIR histories, the "
        f"attention cache of max_len slots). Best of N per column for N > 1. Projection for "
        f"{longest}: {projected:.0f} s.",
        "",
        targets_text(targets),
    ]
    out["markdown"] = "\n".join(md)
    return out


def summarize_long(samples: list[dict]) -> dict:
    pre = min(samples, key=lambda x: x["prefill_s"])
    return {
        "prefill_s": pre["prefill_s"],
        "decode_tok_s": max(x["decode_tok_s"] for x in samples),
        "peak_rss": max(x["peak_rss"] for x in samples),
        "peak_rss_since_load": max((x["peak_rss_since_load"] or 0) for x in samples) or None,
        "rss_after_load": pre["rss_after_load"],
        "state_bytes": pre.get("state_bytes"),
        "n": len(samples),
        "loads": loads_text(samples),
        "samples": samples,
    }


# --------------------------------------------------------------------------- part 5


def part_mvc(b: Bench) -> dict:
    s = b.sizes
    model = b.ff("small")
    li = next(blk for blk in model.blocks if hasattr(getattr(blk, "filter", None), "log_poles"))
    channels = s["mvc_channels"]
    lp = li.filter.log_poles.detach()[:channels].clone()
    res = li.filter.residues.detach()[:channels].clone()
    filt = ModalFilter(lp, res)
    pool = torch.randn(4096, 1, channels, generator=torch.Generator().manual_seed(4))
    out: dict[str, Any] = {"channels": channels, "state": lp.shape[1], "cases": {}}

    def run(method: str, length: int, keep: bool = False) -> dict:
        t0 = time.perf_counter()
        h = filt if method == "modal" else filt.taps(length)
        engine = make_engine(h, method, max_len=length, batch_size=1)
        t1 = time.perf_counter()
        buf = torch.empty(1, channels)
        ys = []
        with torch.inference_mode():
            t2 = time.perf_counter()
            for t in range(length):
                y = engine.step(pool[t % 4096], out=buf)
                if keep:
                    ys.append(y.clone())
            t3 = time.perf_counter()
        r = {"setup_s": t1 - t0, "step_s": t3 - t2}
        if keep:
            r["ys"] = torch.cat(ys)
        return r

    # agreement of the two engines (smallest length)
    first = s["mvc_lengths"][0]
    ym = run("modal", first, keep=True)["ys"]
    yc = run("continuous", first, keep=True)["ys"]
    out["agreement_rel_err"] = float((ym - yc).abs().max() / yc.abs().max())
    rows = []
    per_token: dict[str, list[tuple[int, float]]] = {"modal": [], "continuous": []}
    for length in s["mvc_lengths"]:
        for method in ("modal", "continuous"):
            key = f"{method} {length}"
            hist = per_token[method]
            if hist:
                growth = hist[-1][1] / hist[-2][1] if len(hist) > 1 else 1.5
                projected = hist[-1][1] * max(growth, 1.0) * length
                if projected > s["mvc_max_seconds"]:
                    out["cases"][key] = {
                        "not_run": f"projected {projected:.0f} s > {s['mvc_max_seconds']:.0f} s"
                    }
                    rows.append([length, method, "-", "-", "-", "-", f"not run: {projected:.0f} s"])
                    continue
            samples = repeat(
                lambda m=method, n=length: run(m, n), min(3, s["repeats"]), s["budget_s"], 1
            )
            step = best(samples, "step_s")
            hist.append((length, step / length))
            out["cases"][key] = {
                "step_s": step,
                "us_per_token": step / length * 1e6,
                "setup_s": best(samples, "setup_s"),
                "n": len(samples),
                "samples": samples,
            }
            rows.append(
                [
                    length,
                    method,
                    fmt(step),
                    fmt(step / length * 1e6),
                    fmt(best(samples, "setup_s")),
                    len(samples),
                    f"load {loads_text(samples)}",
                ]
            )
    verdict = []
    for length in s["mvc_lengths"]:
        m, c = out["cases"].get(f"modal {length}", {}), out["cases"].get(f"continuous {length}", {})
        if "step_s" in m and "step_s" in c:
            winner = "modal" if m["step_s"] < c["step_s"] else "continuous"
            ratio = max(m["step_s"], c["step_s"]) / min(m["step_s"], c["step_s"])
            verdict.append(f"L = {length}: {winner} wins by {ratio:.2f}x")
        else:
            verdict.append(f"L = {length}: incomplete")
    out["verdict"] = verdict
    md = [
        f"## modal vs continuous: one Hyena-LI long convolution ({channels} channels, "
        f"{lp.shape[1]} real poles: the small model's first LI layer), batch 1, float32, "
        "stepping L tokens from position 0",
        "",
        table(
            ["L", "engine", "total s", "us/token", "setup s", "N (best of)", "notes"],
            rows,
        ),
        "",
        "- " + "\n- ".join(verdict),
        "",
        f"`make_engine(ModalFilter(log_poles, residues), 'modal', max_len=L)` against "
        f"`make_engine(ModalFilter(...).taps(L), 'continuous', max_len=L)`; each step "
        f"`engine.step(u_t, out=buf)` under `torch.inference_mode()`. Setup (taps, engine) "
        f"is not in the total. The two engines' outputs at L = {first}: max relative difference "
        f"{out['agreement_rel_err']:.1e}.",
    ]
    out["markdown"] = "\n".join(md)
    return out


# --------------------------------------------------------------------------- part 6: profile


def profile_steps(
    model, prompt: torch.Tensor, steps: int, max_len: int, compile: bool = False
) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with futurefill.Decoder(
        model, batch_size=1, max_len=max_len, method="modal", compile=compile
    ) as dec:
        out = dec.prefill(prompt)
        for _ in range(4):
            out = dec.step(out.greedy)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                out = dec.step(out.greedy)
        wall = time.perf_counter() - t0
    rows = []
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    for e in events[:15]:
        rows.append(
            {
                "op": e.key,
                "self_us_per_step": e.self_cpu_time_total / steps,
                "share": e.self_cpu_time_total / total,
                "calls_per_step": e.count / steps,
            }
        )
    head = {
        "wall_ms_per_step_profiled": wall / steps * 1e3,
        "self_total_us": total,
        "ops_per_step": sum(e.count for e in events if e.key.startswith("aten::")) / steps,
    }
    return [head, *rows]


def part_profile(b: Bench) -> dict:
    s = b.sizes
    n_small, n_large = s["profile_steps"]
    out: dict[str, Any] = {}
    small = b.ff("small")
    prompt = random_ids(s["small_prompt"], small.config.vocab_size, seed=1)
    max_len = s["small_prompt"] + s["small_steps"]  # the small part's (its compiled graph's)
    out["small eager modal"] = profile_steps(small, prompt, n_small, max_len)
    if b.compiled_small:
        out["small compiled modal"] = profile_steps(small, prompt, n_small, max_len, True)
    large = b.ff("large")
    prompt = random_ids(min(s["large_prompt"], 512), large.config.vocab_size, seed=2)
    out["large eager modal"] = profile_steps(large, prompt, n_large, prompt.shape[1] + 64)
    md = ["## profile: futurefill's decode step (torch.profiler, CPU, self time per step)", ""]
    for name, prof in out.items():
        head, rows = prof[0], prof[1:]
        per = n_small if "small" in name else n_large
        md += [
            f"### {name} ({head['wall_ms_per_step_profiled']:.2f} ms/step under the profiler, "
            f"self time {head['self_total_us'] / 1e3 / per:.2f} ms/step, "
            f"{head['ops_per_step']:.0f} aten ops/step)",
            "",
            table(
                ["op", "self us/step", "share", "calls/step"],
                [
                    [
                        f"`{r['op']}`",
                        fmt(r["self_us_per_step"]),
                        f"{r['share'] * 100:.1f}%",
                        fmt(r["calls_per_step"]),
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    md.append(
        f"Small: {s['small_prompt']}-token prompt then {n_small} profiled steps; large: a "
        f"{min(s['large_prompt'], 512)}-token prompt then {n_large} steps; load "
        f"{load_avg()[0]:.2f}."
    )
    out["markdown"] = "\n".join(md)
    return out


# --------------------------------------------------------------------------- main


RUNNERS = {
    "small": part_small,
    "large": part_large,
    "ragged": part_ragged,
    "long": part_long,
    "modal-vs-continuous": part_mvc,
    "profile": part_profile,
}


def summary(results: dict, meta: dict) -> str:
    lines = [
        "# futurefill vs vortex on Evo 2 weights (CPU)",
        "",
        f"Written {meta['date']} by `{meta['command']}` (each part's own run: at the end).",
        "",
        f"Machine: {meta['machine']['cpu']} ({meta['machine']['logical_cpus']} logical CPUs, "
        f"{meta['machine']['memory_gib']} GiB), torch {meta['machine']['torch']}, "
        f"{meta['machine']['threads']} threads, vortex (vtx) {meta['machine']['vortex']}. "
        "Float32, batch 1, greedy. The ratios are the result; absolute times hold for this "
        "machine and its load only (shared: the load averages are beside each figure).",
        "",
        "## Headline (futurefill / vortex: speedup = vortex's time / futurefill's)",
        "",
    ]
    small = results.get("small", {}).get("figures")
    if small:
        for name, f in small.items():
            if name != "vortex cached":
                lines.append(
                    f"- small, {name}: decode **{f['decode_speedup_vs_vortex']:.2f}x**, "
                    f"prefill {f['prefill_speedup_vs_vortex']:.2f}x"
                )
    large = results.get("large", {}).get("figures")
    if large:
        for name, f in large.items():
            if name != "vortex cached":
                lines.append(
                    f"- large, {name}: prefill **{f['prefill_speedup_vs_vortex']:.2f}x** "
                    f"({f['prefill_over_matmul_floor']:.2f}x the matmul floor), decode "
                    f"**{f['decode_speedup_vs_vortex']:.2f}x** "
                    f"({f['decode_over_weight_floor']:.2f}x the weight floor)"
                )
    ragged = results.get("ragged", {}).get("figures")
    if ragged:
        for name, f in ragged.items():
            if name.startswith("futurefill"):
                lines.append(f"- ragged, {name}: **{f['speedup_vs_vortex']:.2f}x**")
    mvc = results.get("modal-vs-continuous", {}).get("verdict")
    if mvc:
        lines.append("- modal vs continuous: " + "; ".join(mvc))
    lines += ["", "## Targets", ""]
    for part, r in results.items():
        if r.get("targets"):
            lines.append(f"{part}:")
            lines.append("")
            lines.append(targets_text(r["targets"]))
            lines.append("")
        if "error" in r:
            lines += [f"{part}: **FAILED**: {r['error']}", ""]
    lines += ["## Runs: load averages (1, 5, 15 min) before / after each part", ""]
    for part, r in results.items():
        lines.append(
            f"- {part}: {r.get('date', meta['date'])}, `{r.get('command', meta['command'])}`, "
            f"futurefill {r.get('source', '?')}: "
            f"{r.get('load_before')} / {r.get('load_after')} ({r.get('seconds', 0):.0f} s)"
        )
    return "\n".join(lines) + "\n"


def clean(obj: Any) -> Any:
    """JSON-able: tensors to lists, infinities to strings."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items() if k != "ys"}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default {DEFAULT_OUT.relative_to(ROOT)}; with --quick a new "
        "temporary folder)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}"
    )
    parser.add_argument("--seed", type=int, default=0, help="the checkpoints' weights")
    parser.add_argument(
        "--long-limit",
        type=float,
        default=None,
        metavar="S",
        help="long: run the longest prompt (262,144) when its projected prefill is under S "
        "seconds (default 300)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each timed sample wait up to S seconds for no other runnable process",
    )
    parser.add_argument(
        "--worktree",
        action="store_true",
        help="import futurefill from the working tree as it is (default: a snapshot of the "
        "committed HEAD, so that edits made meanwhile do not enter the run)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child_long(json.loads(args.child))
        print(json.dumps(clean(result)))
        return 0
    torch.set_num_threads(args.threads)
    QUIET_S[0] = args.wait_quiet
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in RUNNERS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    out_dir = args.out or (
        Path(tempfile.mkdtemp(prefix="bench_evo_quick_")) if args.quick else DEFAULT_OUT
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    if not vr.vortex_available():
        print("vortex (pip install vtx) is not importable", file=sys.stderr)
        return 1
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "quick": args.quick,
        "load_start": load_avg(),
        "source": SOURCE,
    }
    bench = Bench(args)
    json_path = out_dir / "bench_evo.json"
    # a run of some parts keeps the other parts' results already in the folder
    kept: dict[str, Any] = {}
    if json_path.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            kept = {
                k: v
                for k, v in json.loads(json_path.read_text())["results"].items()
                if k in PARTS and k not in parts
            }
    results: dict[str, Any] = {}
    t_start = time.perf_counter()
    for part in PARTS:
        if part not in parts:
            continue
        waited = quiet_wait(3 * args.wait_quiet)
        before = load_avg()
        print(f"[{time.perf_counter() - t_start:6.0f} s] {part} (load {before})", flush=True)
        t0 = time.perf_counter()
        try:
            r = RUNNERS[part](bench)
        except Exception as exc:  # the other parts still run
            import traceback

            traceback.print_exc()
            r = {"error": f"{type(exc).__name__}: {exc}"}
        r.update(
            load_before=before,
            load_after=load_avg(),
            seconds=time.perf_counter() - t0,
            waited_for_quiet_s=waited,
            date=meta["date"],
            command=meta["command"],
            source=f"{SOURCE['mode']} {SOURCE['head'][:12]}",
            threads=args.threads,
        )
        results[part] = r
        if "markdown" in r:
            r["markdown"] += "\n\n" + LOAD_NOTE
            header = (
                f"<!-- {meta['date']}, {meta['command']}; futurefill {SOURCE['mode']} "
                f"{SOURCE['head'][:12]} ({SOURCE['subject'][:60]}); {meta['machine']['cpu']}, "
                f"torch {meta['machine']['torch']}, {args.threads} threads; load averages before "
                f"{before}, after {r['load_after']} -->\n\n"
            )
            (out_dir / f"{part}.md").write_text(header + r["markdown"] + "\n")
            print(r["markdown"], flush=True)
            print(flush=True)
        meta["load_end"] = load_avg()
        merged = {p: results.get(p, kept.get(p)) for p in PARTS if p in results or p in kept}
        json_path.write_text(
            json.dumps(clean({"meta": meta, "sizes": bench.sizes, "results": merged}), indent=1)
        )
        gc.collect()
    merged = {p: results.get(p, kept.get(p)) for p in PARTS if p in results or p in kept}
    text = summary(merged, meta)
    (out_dir / "summary.md").write_text(text)
    print(text)
    print(f"wrote {out_dir}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
