"""``futurefill bench {layer,prompt,model,context,fork,serve,paper,all}``: options, presets, output.

Each benchmark's options are the fields of its config dataclass (each field's metadata gives its
help and checker). An option left unset takes the preset's value (``--preset``,
:mod:`futurefill.bench.presets`), else the field's default; the resolved configuration is
recorded in the JSON report together with the equivalent full command line. ``bench serve`` and
``bench paper`` register their own options (:mod:`futurefill.bench.serve`,
:mod:`futurefill.bench.paper`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from futurefill.bench import common
from futurefill.bench.presets import BENCHMARKS, PRESETS, pow2
from futurefill.cli import options

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
    from futurefill.bench import paper, serve

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
            exponent = options.bounded_int(0, 40, "an exponent")
            what = "sweep 2^min-log2 .. 2^max-log2 instead of --lengths (default: unset)"
            parser.add_argument("--min-log2", type=exponent, help=what)
            parser.add_argument("--max-log2", type=exponent, help="see --min-log2 (default: unset)")
        if name in ("model", "context"):
            help = "also time the compiled token step: the method 'compiled' (default: off)"
            parser.add_argument("--compile", action="store_true", help=help)
        parser.set_defaults(func=_run_one, bench=name)
    serve.register(sub)
    paper.register(sub)
    every = sub.add_parser(
        "all", help="layer, prompt, model, context and fork, one after the other"
    )
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
            raise options.UsageError("--min-log2 and --max-log2 go together")
        if "lengths" in given:
            raise options.UsageError("give either --lengths or --min-log2/--max-log2, not both")
        if lo > hi:
            raise options.UsageError(f"--min-log2 {lo} is above --max-log2 {hi}")
        given["lengths"] = pow2(lo, hi)
    config = cls(**{**values, **given})
    if getattr(args, "compile", False) and "compiled" not in config.methods:
        config = dataclasses.replace(config, methods=(*config.methods, "compiled"))
    try:
        common.check_config(BENCHMARKS[name], config)
    except ValueError as exc:
        raise options.UsageError(str(exc)) from None
    need, have = BENCHMARKS[name].peak_bytes(config), options.total_memory()
    if need > have:
        raise options.UsageError(
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
