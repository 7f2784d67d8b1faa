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

from futurefill import argtypes
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


def _module(name: str):
    return importlib.import_module(f"futurefill.bench.{name}")


# ------------------------------------------------------------------------------ arguments

LENGTH = argtypes.bounded_int(1, None, "a length")  # memory: check_memory


def _default(bench: str, field: str) -> str:
    """`` (default X)``, with the presets' values where they set the option."""
    config = _module(bench).CONFIG
    value = next(f.default for f in dataclasses.fields(config) if f.name == field)
    if isinstance(value, tuple):
        value = " ".join(map(str, value))
    unset = {"threads": "all cores", "tol": "by dtype", "slope_from": "none"}
    shown = unset.get(field, value) if value is None else value
    presets = [p for p in sorted(PRESETS) if field in PRESETS[p].get(bench, {})]
    note = f"; --preset {'/'.join(presets)} sets it" if presets else ""
    return f" (default {shown}{note})"


def _add_common(p: argparse.ArgumentParser, bench: str) -> None:
    def add(flag: str, help: str, **kwargs: Any) -> None:
        field = flag[2:].replace("-", "_")
        p.add_argument(flag, help=help + _default(bench, field), **kwargs)

    presets = sorted(name for name in PRESETS if bench in PRESETS[name])
    p.add_argument(
        "--preset",
        choices=presets,
        help="quick (make demo), full"
        + (", hyenadna (HyenaDNA-large-1m shape)" if "hyenadna" in presets else "")
        + " (default: none)",
    )
    add("--out", "directory for JSON, CSV, table and PNGs", type=argtypes.output_dir)
    add("--device", "cpu, cuda or cuda:N", type=argtypes.device_name)
    add("--dtype", "working precision", choices=sorted(common.DTYPES))
    add("--threads", "torch intra-op threads, 1 to the cores", type=argtypes.threads)
    add("--repeats", "runs per cell; the median is reported", type=argtypes.bounded_int(1))
    budget = argtypes.finite_float(0, low_open=True)
    add("--budget", "seconds one run may take; longer projected runs are skipped", type=budget)
    tol = argtypes.finite_float(0, low_open=True)
    add("--tol", "agreement tolerance relative to the output scale; by dtype if unset", type=tol)
    add("--seed", "seed of the random inputs and weights", type=argtypes.seed)
    add("--warmup-len", "length of the warm-up run of every method", type=LENGTH)
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars (default: shown)",
    )
    p.add_argument(
        "--no-plots",
        dest="plots",
        action="store_false",
        default=None,
        help="no PNG plots (default: written)",
    )


def _add_lengths(p: argparse.ArgumentParser, bench: str, what: str) -> None:
    p.add_argument(
        "--lengths", type=LENGTH, nargs="+", help=f"{what} to sweep" + _default(bench, "lengths")
    )
    exponent = argtypes.bounded_int(0, 40, "an exponent")
    p.add_argument(
        "--min-log2",
        type=exponent,
        help=f"sweep {what} 2^min-log2 .. 2^max-log2, instead of --lengths (default: unset)",
    )
    p.add_argument("--max-log2", type=exponent, help="see --min-log2 (default: unset)")


def _add_sizes(p: argparse.ArgumentParser, bench: str) -> None:
    size = argtypes.bounded_int(1, 2**20, "a size")
    p.add_argument("--batch", type=size, help="batch size B" + _default(bench, "batch"))
    if bench in ("layer", "prompt"):
        p.add_argument("--channels", type=size, help="channels D" + _default(bench, "channels"))
        return
    p.add_argument("--d-model", type=size, help="model width" + _default(bench, "d_model"))
    p.add_argument("--n-layers", type=size, help="layers" + _default(bench, "n_layers"))
    p.add_argument("--vocab-size", type=size, help="vocabulary" + _default(bench, "vocab_size"))
    _add_names(p, bench, "mixers", _module("model").BENCH_MIXERS)


def _add_names(p: argparse.ArgumentParser, bench: str, field: str, names: Sequence[str]) -> None:
    """``--methods`` or ``--mixers``: one or more of ``names``."""
    p.add_argument(
        f"--{field}",
        nargs="+",
        choices=names,
        metavar=field[:-1].upper(),
        help=", ".join(names) + _default(bench, field),
    )


def _add_compile(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the compiled token step (adds the method 'compiled': continuous, one "
        "torch.compile graph per token; default: off)",
    )


def _add_slope(p: argparse.ArgumentParser, bench: str) -> None:
    p.add_argument(
        "--slope-from",
        type=LENGTH,
        help="also fit the slope over L >= this" + _default(bench, "slope_from"),
    )


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
    _add_common(layer, "layer")
    _add_lengths(layer, "layer", "generated lengths L")
    _add_names(layer, "layer", "methods", _module("layer").LAYER_METHODS)
    _add_sizes(layer, "layer")
    _add_slope(layer, "layer")
    layer.set_defaults(func=_run_one, bench="layer")

    prompt = sub.add_parser("prompt", help="prompt of length P, then K generated steps")
    _add_common(prompt, "prompt")
    prompt.add_argument(
        "--prompt-lens",
        type=LENGTH,
        nargs="+",
        help="prompt lengths P" + _default("prompt", "prompt_lens"),
    )
    prompt.add_argument(
        "--gen-lens",
        type=LENGTH,
        nargs="+",
        help="generated lengths K" + _default("prompt", "gen_lens"),
    )
    _add_names(prompt, "prompt", "methods", _module("prompt").ONLINE_METHODS)
    _add_sizes(prompt, "prompt")
    prompt.set_defaults(func=_run_one, bench="prompt")

    model = sub.add_parser("model", help="the ConvLM end to end: tokens/s against context length")
    _add_common(model, "model")
    _add_lengths(model, "model", "generated lengths (context)")
    _add_names(model, "model", "methods", tuple(_module("model").MODEL_STEPPERS))
    _add_compile(model)
    _add_sizes(model, "model")
    _add_slope(model, "model")
    model.set_defaults(func=_run_one, bench="model")

    context = sub.add_parser(
        "context", help="the ConvLM: decode tokens/s after a prompt of P tokens, against P"
    )
    _add_common(context, "context")
    context.add_argument(
        "--prompt-lens",
        "--prompt-len",
        "--contexts",
        dest="prompt_lens",
        type=LENGTH,
        nargs="+",
        help="context lengths P: prompt tokens prefilled before decoding"
        + _default("context", "prompt_lens"),
    )
    context.add_argument(
        "--new-tokens",
        type=LENGTH,
        help="tokens K decoded at each P" + _default("context", "new_tokens"),
    )
    _add_names(context, "context", "methods", tuple(_module("model").MODEL_STEPPERS))
    _add_compile(context)
    _add_sizes(context, "context")
    context.set_defaults(func=_run_one, bench="context")

    every = sub.add_parser("all", help="layer, prompt, model and context, one after the other")
    every.add_argument(
        "--preset",
        choices=[p for p in sorted(PRESETS) if all(b in PRESETS[p] for b in BENCHMARKS)],
        default="quick",
        help="quick (make demo) or full (default quick)",
    )
    every.add_argument(
        "--out",
        type=argtypes.output_dir,
        default=Path("results"),
        help="directory for every benchmark's files (default results)",
    )
    every.add_argument(
        "--device", type=argtypes.device_name, help="cpu, cuda or cuda:N (default cpu)"
    )
    every.add_argument(
        "--dtype", choices=sorted(common.DTYPES), help="working precision (default float32)"
    )
    every.add_argument(
        "--threads", type=argtypes.threads, help="torch intra-op threads (default all cores)"
    )
    every.add_argument(
        "--repeats", type=argtypes.bounded_int(1), help="runs per cell (default: the preset's)"
    )
    every.add_argument(
        "--budget",
        type=argtypes.finite_float(0, low_open=True),
        help="seconds one run may take (default: the preset's)",
    )
    every.add_argument(
        "--seed", type=argtypes.seed, help="seed of the random inputs and weights (default 0)"
    )
    every.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars (default: shown)",
    )
    every.add_argument(
        "--no-plots",
        dest="plots",
        action="store_false",
        default=None,
        help="no PNG plots (default: written)",
    )
    every.add_argument(
        "--skip",
        nargs="+",
        choices=BENCHMARKS,
        default=[],
        help="benchmarks to leave out (default none)",
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
            raise argtypes.UsageError("--min-log2 and --max-log2 go together")
        if "lengths" in given:
            raise argtypes.UsageError("give either --lengths or --min-log2/--max-log2, not both")
        if lo > hi:
            raise argtypes.UsageError(f"--min-log2 {lo} is above --max-log2 {hi}")
        given["lengths"] = _pow2(lo, hi)
    values.update(given)
    if getattr(args, "compile", False):
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        methods = tuple(values.get("methods") or defaults["methods"])
        values["methods"] = methods if "compiled" in methods else (*methods, "compiled")
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    config = cls(**values)
    check_memory(name, config)
    return config


def check_memory(name: str, config: Any) -> None:
    """UsageError when the largest run would need more memory than the machine has."""
    need = _module(name).peak_bytes(config)
    have = argtypes.total_memory()
    if need > have:
        raise argtypes.UsageError(
            f"the largest run of bench {name} needs about {common.fmt_bytes(need)} by estimate, "
            f"more than this machine's {common.fmt_bytes(have)}; lower the lengths, batch or width"
        )


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
    table = module.table(report)
    written = common.write_report(
        config.out,
        name,
        report,
        module.CSV_COLUMNS,
        table,
        module.plot if config.plots else None,
        getattr(module, "PER_POSITION_KEYS", None),
    )
    print(table)
    print("Wrote " + ", ".join(str(p) for p in written))
    print(f"Rerun with: {report['command']}")
    print(f"bench {name}: {report['wall_s']:.1f} s in all")
    return common.report_failures(f"bench {name}", report["failures"])


def _run_one(args: argparse.Namespace) -> int:
    return run_benchmark(args.bench, resolve_config(args.bench, args))


def _run_all(args: argparse.Namespace) -> int:
    code = 0
    names = [name for name in BENCHMARKS if name not in args.skip]
    configs = {name: resolve_config(name, args) for name in names}  # every check before any run
    for name in names:
        if name in NEEDS_MODEL and not model_available():
            print(
                f"bench {name}: skipped, futurefill.model (ConvLM) is not available",
                file=sys.stderr,
            )
            continue
        code = max(code, run_benchmark(name, configs[name]))
    return code


def model_available() -> bool:
    try:
        importlib.import_module("futurefill.model")
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``futurefill bench ...`` on its own (the same as the ``futurefill`` console script)."""
    parser = argtypes.ArgumentParser(prog="futurefill")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return argtypes.run_command(f"futurefill bench {args.bench_command}", lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
