"""``futurefill bench {layer,prompt,model,context,all}``: options, presets and output.

Each benchmark's options are the fields of its config dataclass (:func:`common.option` gives each
its help and checker). An option left unset takes the preset's value (``--preset``), else the
field's default; the resolved configuration is recorded in the JSON report together with the
equivalent full command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from futurefill import argtypes
from futurefill.bench import common, layer, model

BENCHMARKS = {b.name: b for b in (layer.LAYER, layer.PROMPT, model.MODEL, model.CONTEXT)}


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
    # A HyenaDNA-large-1m-shaped model (random weights) decoding after long DNA prompts, against
    # recompute (a full forward per token: the Hugging Face port's generate()). Its tolerance is
    # wider than float32's 1e-4 for the reason given beside it.
    "hyenadna": {
        "context": {
            "prompt_lens": _pow2(12, 17),  # 2^18 needs more than this machine's 24 GiB
            "new_tokens": 16,
            "methods": ("naive", "epoched", "continuous", "compiled", "recompute"),
            "mixers": ("hyenadna",),
            "d_model": 256,
            "n_layers": 8,
            "vocab_size": 16,
            "repeats": 1,
            "budget": 400.0,
            # The float32 forward itself (every method alike: its prefill FFT) is 5.7e-5 from
            # float64 at P = 2^15, 8.1e-5 at 2^16, 1.06e-4 at 2^17: growing like sqrt(P).
            "tol": 3e-4,
        },
    },
}
SHARED = [f for f in dataclasses.fields(common.Options) if f.name not in ("warmup_len", "tol")]


def _fields(config: Any) -> list[dataclasses.Field]:
    """The fields of a config class or instance in the order its classes declare them, the most
    derived first: the benchmark's own, its shape's, then the options every benchmark has."""
    cls = config if isinstance(config, type) else type(config)
    order = [name for c in cls.__mro__ for name in vars(c).get("__annotations__", {})]
    return sorted(dataclasses.fields(cls), key=lambda f: order.index(f.name))


def _add_option(parser: argparse.ArgumentParser, field: dataclasses.Field, default: str) -> None:
    """``--field-name`` (``--no-field-name`` for a bool) from the field's metadata."""
    meta = dict(field.metadata)
    text, flag = meta.pop("help"), "--" + field.name.replace("_", "-")
    if isinstance(field.default, bool):
        parser.add_argument(
            flag.replace("--", "--no-"),
            dest=field.name,
            action="store_false",
            default=None,
            help=f"leave out the {text} (default: {'written' if field.default else 'off'})",
        )
        return
    if "choices" in meta:
        meta["metavar"] = field.name.rstrip("s").upper()
        text += ": " + ", ".join(meta["choices"])
    parser.add_argument(
        flag, *meta.pop("aliases", ()), dest=field.name, help=text + default, **meta
    )


def _default(name: str, field: dataclasses.Field) -> str:
    """`` (default X)``, with the presets that set the option."""
    value = field.default
    shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
    if value is None:
        shown = "none" if "(default" not in field.metadata["help"] else None
    presets = [p for p in sorted(PRESETS) if field.name in PRESETS[p].get(name, {})]
    note = f"; --preset {'/'.join(presets)} sets it" if presets else ""
    return "" if shown is None else f" (default {shown}{note})"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands to the ``futurefill`` command line."""
    import futurefill.bench
    from futurefill.bench import serve

    bench = subparsers.add_parser(
        "bench",
        help="benchmarks: " + ", ".join([*BENCHMARKS, "all"]),
        description=futurefill.bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = bench.add_subparsers(dest="bench_command", required=True)
    for name, spec in BENCHMARKS.items():
        parser = sub.add_parser(name, help=spec.summary)
        presets = [p for p in sorted(PRESETS) if name in PRESETS[p]]
        parser.add_argument(
            "--preset",
            choices=presets,
            help="a set of option values; options given beside it win (default: none)",
        )
        for field in _fields(spec.config):
            _add_option(parser, field, _default(name, field))
        if "lengths" in PRESETS["quick"][name]:
            exponent = argtypes.bounded_int(0, 40, "an exponent")
            what = "sweep 2^min-log2 .. 2^max-log2 instead of --lengths (default: unset)"
            parser.add_argument("--min-log2", type=exponent, help=what)
            parser.add_argument("--max-log2", type=exponent, help="see --min-log2 (default: unset)")
        if name in ("model", "context"):
            help = "also time the compiled token step: the method 'compiled' (default: off)"
            parser.add_argument("--compile", action="store_true", help=help)
        parser.set_defaults(func=_run_one, bench=name)
    serve.register(sub)
    every = sub.add_parser("all", help="layer, prompt, model and context, one after the other")
    every.add_argument(
        "--preset",
        choices=[p for p in sorted(PRESETS) if set(BENCHMARKS) <= set(PRESETS[p])],
        default="quick",
        help="quick (make demo) or full (default quick)",
    )
    for field in SHARED:
        _add_option(every, field, " (default: the preset's, else the benchmark's)")
    every.add_argument(
        "--skip",
        nargs="+",
        choices=BENCHMARKS,
        default=[],
        help="benchmarks to leave out (default none)",
    )
    every.set_defaults(func=_run_all)


def resolve_config(name: str, args: argparse.Namespace) -> Any:
    """The benchmark's config: field defaults < preset < options given on the command line."""
    cls = BENCHMARKS[name].config
    values = dict(PRESETS[args.preset][name]) if getattr(args, "preset", None) else {}
    given = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
    lo, hi = getattr(args, "min_log2", None), getattr(args, "max_log2", None)
    if lo is not None or hi is not None:
        if lo is None or hi is None:
            raise argtypes.UsageError("--min-log2 and --max-log2 go together")
        if "lengths" in given:
            raise argtypes.UsageError("give either --lengths or --min-log2/--max-log2, not both")
        if lo > hi:
            raise argtypes.UsageError(f"--min-log2 {lo} is above --max-log2 {hi}")
        given["lengths"] = _pow2(lo, hi)
    config = cls(**{**values, **given})
    if getattr(args, "compile", False) and "compiled" not in config.methods:
        config = dataclasses.replace(config, methods=(*config.methods, "compiled"))
    try:
        common.check_config(BENCHMARKS[name], config)
    except ValueError as exc:
        raise argtypes.UsageError(str(exc)) from None
    need, have = BENCHMARKS[name].peak_bytes(config), argtypes.total_memory()
    if need > have:
        raise argtypes.UsageError(
            f"the largest run of bench {name} needs about {common.fmt_bytes(need)} by estimate, "
            f"more than this machine's {common.fmt_bytes(have)}; lower the lengths, batch or width"
        )
    return config


def equivalent_command(name: str, config: Any) -> str:
    """A command line that reruns ``config`` exactly (every option spelled out)."""
    parts = ["futurefill", "bench", name]
    for field in _fields(config):
        value, flag = getattr(config, field.name), "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            parts += [] if value else [flag.replace("--", "--no-")]
        elif value is not None:
            parts += [flag, *map(str, value if isinstance(value, tuple) else (value,))]
    return " ".join(parts)


def run_benchmark(name: str, config: Any) -> int:
    """Run one benchmark, write its files, print its table; exit code 1 on agreement failure."""
    bench = BENCHMARKS[name]
    began = time.perf_counter()
    report = common.run(bench, config)
    report["wall_s"] = time.perf_counter() - began
    report["command"] = equivalent_command(name, config)
    written = common.write_report(bench, report, Path(config.out), config.plots)
    print(common.table(bench, report))
    print("Wrote " + ", ".join(map(str, written)))
    print(f"Rerun with: {report['command']}")
    print(f"bench {name}: {report['wall_s']:.1f} s in all")
    if not report["failures"]:
        return 0
    bar = "!" * 78
    lines = [bar, f"bench {name}: AGREEMENT CHECK FAILED, these outputs differ from the reference:"]
    print("\n".join([*lines, *(f"  {f}" for f in report["failures"]), bar]), file=sys.stderr)
    return 1


def _run_one(args: argparse.Namespace) -> int:
    return run_benchmark(args.bench, resolve_config(args.bench, args))


def _run_all(args: argparse.Namespace) -> int:
    names = [name for name in BENCHMARKS if name not in args.skip]
    configs = {name: resolve_config(name, args) for name in names}  # every check before any run
    return max((run_benchmark(name, configs[name]) for name in names), default=0)


def main(argv: Sequence[str] | None = None) -> int:
    """``futurefill bench ...`` on its own (the same as the ``futurefill`` console script)."""
    parser = argtypes.ArgumentParser(prog="futurefill")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return argtypes.run_command(f"futurefill bench {args.bench_command}", lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
