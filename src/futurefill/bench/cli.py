"""``futurefill bench {layer,prompt,model,context,all}``: argument parsing, presets and output.

Every option left unset takes the preset's value (``--preset quick|full``), else the default of the
benchmark's config dataclass; the resolved configuration is recorded in the JSON report together
with the equivalent full command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from futurefill.bench import common

BENCHMARKS = ("layer", "prompt", "model", "context")
NEEDS_MODEL = ("model", "context")  # skipped by ``all`` where futurefill.model is missing


def _pow2(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(2**k for k in range(lo, hi + 1))


# Presets. quick: `make demo`, well under a minute and a half on two CPU cores.
# full: the FutureFill methods reach L = 2^18 (128 channels, batch 1, float32, every core); naive
# and recompute stop where one run is projected past the budget (naive reaches 2^16 on 2 cores).
# Its prompt grid reaches P = 2^16; its context sweep decodes K = 256 tokens after prompts of up
# to 2^15 tokens (the ConvLM of the project target).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "layer": {"lengths": _pow2(8, 12), "repeats": 3, "budget": 2.0, "warmup_len": 128},
        "prompt": {"prompt_lens": (256, 2048), "gen_lens": (256, 1024), "budget": 2.0},
        "model": {
            "lengths": _pow2(6, 8),
            "mixers": ("stu_tensordot", "hyena"),
            "repeats": 1,
            "budget": 3.0,
        },
        "context": {"prompt_lens": (128, 512), "new_tokens": 32, "repeats": 1, "budget": 3.0},
    },
    "full": {
        "layer": {"lengths": _pow2(8, 18), "repeats": 3, "budget": 250.0, "slope_from": 2**12},
        "prompt": {
            "prompt_lens": (1024, 4096, 16384, 65536),
            "gen_lens": (1024, 4096, 16384),
            "budget": 200.0,
        },
        "model": {"lengths": _pow2(7, 13), "repeats": 1, "budget": 60.0},
        "context": {
            "prompt_lens": (2**10, 2**12, 2**14, 2**15),
            "new_tokens": 256,
            "methods": ("naive", "epoched", "continuous"),
            "mixers": ("stu_tensordot",),
            "d_model": 128,
            "n_layers": 4,
            "repeats": 3,
            "budget": 60.0,
        },
    },
}


def _module(name: str):
    return importlib.import_module(f"futurefill.bench.{name}")


# ------------------------------------------------------------------------------ arguments


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), help="quick (make demo) or full")
    p.add_argument("--out", type=Path, help="directory for JSON, CSV, table and PNGs (results)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=sorted(common.DTYPES), help="default float32")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores)")
    p.add_argument("--repeats", type=int, help="runs per cell; the median is reported")
    p.add_argument(
        "--budget", type=float, help="seconds one run may take; longer projected runs are skipped"
    )
    p.add_argument("--tol", type=float, help="agreement tolerance, relative to the output scale")
    p.add_argument("--seed", type=int)
    p.add_argument("--warmup-len", type=int, help="length of the warm-up run of every method")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    p.add_argument("--no-plots", dest="plots", action="store_false", default=None)


def _add_lengths(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--lengths", type=int, nargs="+", help=f"{what} to sweep")
    p.add_argument("--min-log2", type=int, help=f"sweep {what} 2^min-log2 .. 2^max-log2")
    p.add_argument("--max-log2", type=int)


def _add_model_options(p: argparse.ArgumentParser, methods: str) -> None:
    p.add_argument("--methods", nargs="+", help=methods)
    p.add_argument("--mixers", nargs="+", help="stu_tensordot longconv stu hyena")
    p.add_argument("--batch", type=int, help="batch size B (default 1)")
    p.add_argument("--d-model", type=int, help="model width (default 128)")
    p.add_argument("--n-layers", type=int, help="layers (default 4)")
    p.add_argument("--vocab-size", type=int, help="vocabulary (default 256)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands to the ``futurefill`` command line."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: layer, prompt, model, context, all",
        description=_module_doc(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = bench.add_subparsers(dest="bench_command", required=True)

    layer = sub.add_parser("layer", help="one online convolution, total time against L")
    _add_common(layer)
    _add_lengths(layer, "generated lengths L")
    layer.add_argument("--methods", nargs="+", help="naive epoched continuous recompute offline")
    layer.add_argument("--channels", type=int, help="channels D (default 128)")
    layer.add_argument("--batch", type=int, help="batch size B (default 1)")
    layer.add_argument("--slope-from", type=int, help="also fit the slope over L >= this")
    layer.set_defaults(func=_run_one, bench="layer")

    prompt = sub.add_parser("prompt", help="prompt of length P, then K generated steps")
    _add_common(prompt)
    prompt.add_argument("--prompt-lens", type=int, nargs="+", help="prompt lengths P")
    prompt.add_argument("--gen-lens", type=int, nargs="+", help="generated lengths K")
    prompt.add_argument("--methods", nargs="+", help="naive epoched continuous")
    prompt.add_argument("--channels", type=int, help="channels D (default 128)")
    prompt.add_argument("--batch", type=int, help="batch size B (default 1)")
    prompt.set_defaults(func=_run_one, bench="prompt")

    model = sub.add_parser("model", help="the ConvLM end to end: tokens/s against context length")
    _add_common(model)
    _add_lengths(model, "generated lengths (context)")
    _add_model_options(model, "naive epoched continuous recompute")
    model.add_argument("--slope-from", type=int, help="also fit the slope over L >= this")
    model.set_defaults(func=_run_one, bench="model")

    context = sub.add_parser(
        "context", help="the ConvLM: decode tokens/s after a prompt of P tokens, against P"
    )
    _add_common(context)
    context.add_argument(
        "--prompt-lens",
        "--prompt-len",
        "--contexts",
        dest="prompt_lens",
        type=int,
        nargs="+",
        help="context lengths P: prompt tokens prefilled before decoding (default 1024 4096)",
    )
    context.add_argument("--new-tokens", type=int, help="tokens K decoded at each P (default 256)")
    _add_model_options(context, "naive epoched continuous (default), recompute")
    context.set_defaults(func=_run_one, bench="context")

    every = sub.add_parser("all", help="layer, prompt, model and context, one after the other")
    every.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    every.add_argument("--out", type=Path, default=Path("results"))
    every.add_argument("--device")
    every.add_argument("--dtype", choices=sorted(common.DTYPES))
    every.add_argument("--threads", type=int)
    every.add_argument("--repeats", type=int)
    every.add_argument("--budget", type=float)
    every.add_argument("--seed", type=int)
    every.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    every.add_argument("--no-plots", dest="plots", action="store_false", default=None)
    every.add_argument(
        "--skip", nargs="+", choices=BENCHMARKS, default=[], help="benchmarks to leave out"
    )
    every.set_defaults(func=_run_all)


def _module_doc() -> str:
    import futurefill.bench

    return futurefill.bench.__doc__ or ""


def resolve_config(name: str, args: argparse.Namespace) -> Any:
    """The benchmark's config: dataclass defaults < preset < options given on the command line."""
    cls = _module(name).CONFIG
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if getattr(args, "preset", None):
        values.update(PRESETS[args.preset][name])
    given = {k: v for k, v in vars(args).items() if v is not None and k in fields}
    lo, hi = getattr(args, "min_log2", None), getattr(args, "max_log2", None)
    if lo is not None or hi is not None:
        if lo is None or hi is None:
            raise SystemExit("--min-log2 and --max-log2 go together")
        if "lengths" in given:
            raise SystemExit("give either --lengths or --min-log2/--max-log2, not both")
        given["lengths"] = _pow2(lo, hi)
    values.update(given)
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return cls(**values)


def equivalent_command(name: str, config: Any) -> str:
    """A command line that reruns ``config`` exactly (every option spelled out)."""
    parts = ["futurefill", "bench", name]
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        flag = "--" + field.name.replace("_", "-")
        if field.name in ("progress", "plots"):
            if not value:
                parts.append(f"--no-{field.name}")
        elif value is None:
            continue
        elif isinstance(value, tuple | list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def run_benchmark(name: str, config: Any) -> int:
    """Run one benchmark, write its files, print its table; exit code 1 on agreement failure."""
    module = _module(name)
    began = time.perf_counter()
    report = module.run(config)
    report["wall_s"] = time.perf_counter() - began
    report["command"] = equivalent_command(name, config)
    written = module.write_outputs(report, config.out, make_plots=config.plots)
    print(module.table(report))
    print("Wrote " + ", ".join(str(p) for p in written))
    print(f"Rerun with: {report['command']}")
    print(f"bench {name}: {report['wall_s']:.1f} s in all")
    return common.report_failures(f"bench {name}", report["failures"])


def _run_one(args: argparse.Namespace) -> int:
    return run_benchmark(args.bench, resolve_config(args.bench, args))


def _run_all(args: argparse.Namespace) -> int:
    code = 0
    for name in BENCHMARKS:
        if name in args.skip:
            continue
        if name in NEEDS_MODEL and not model_available():
            print(
                f"bench {name}: skipped, futurefill.model (ConvLM) is not available",
                file=sys.stderr,
            )
            continue
        code = max(code, run_benchmark(name, resolve_config(name, args)))
    return code


def model_available() -> bool:
    try:
        importlib.import_module("futurefill.model")
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``futurefill bench ...`` on its own (the same as the ``futurefill`` console script)."""
    parser = argparse.ArgumentParser(prog="futurefill")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
