"""``futurefill train``: train the byte-level demo model (:mod:`futurefill.demo.train`)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from futurefill.cli import options
from futurefill.demo.train import TrainConfig, train

__all__ = ["register"]


# Every option of ``futurefill train``: (accepted values, help). Checked before any work.
def _options() -> dict[str, tuple[Any, str]]:
    from futurefill.model import MIXERS

    count, nonneg = options.bounded_int(1), options.bounded_int(0)
    positive = options.finite_float(0, low_open=True)
    return {
        "mixer": (MIXERS, "sequence mixer of every layer"),
        "d_model": (count, "model width"),
        "n_layers": (count, "residual blocks"),
        "mlp_ratio": (count, "MLP hidden width over d_model"),
        "num_eigh": (count, "STU spectral filters"),
        "max_len": (count, "filter length: the longest prompt + generation at inference"),
        "steps": (count, "optimiser steps"),
        "batch_size": (count, "windows per step"),
        "context": (count, "training window length (at most max_len)"),
        "lr": (positive, "peak learning rate (AdamW)"),
        "min_lr_ratio": (options.finite_float(0, 1), "final learning rate over the peak"),
        "warmup": (nonneg, "linear warm-up steps"),
        "weight_decay": (options.finite_float(0), "AdamW weight decay of the matrices"),
        "grad_clip": (positive, "gradient norm clip"),
        "val_fraction": (
            options.finite_float(0, 1, low_open=True, high_open=True),
            "share of the corpus held out for validation",
        ),
        "eval_every": (nonneg, "validation every this many steps (0: at the end only)"),
        "heldout_windows": (count, "validation windows stored in heldout.bin"),
        "save_every": (nonneg, "checkpoint every this many steps (0: at the end only)"),
        "seed": (options.seed, "seed of the initialisation and the batches"),
        "threads": (options.threads, "torch threads (default: torch's own)"),
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    parser = options.add_command(
        subparsers,
        "train",
        help="train the byte-level demo model on Python's documentation topics",
        description="Train the byte-level demo model on Python's documentation topics "
        "(deterministic for a seed and thread count).",
    )
    parser.add_argument(
        "--out", required=True, type=options.output_dir, help="output directory for the checkpoint"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    defaults = TrainConfig()
    for name, (accepted, help_text) in _options().items():
        flag = "--" + name.replace("_", "-")
        kind = {"choices": accepted} if isinstance(accepted, tuple) else {"type": accepted}
        parser.add_argument(flag, default=getattr(defaults, name), help=help_text, **kind)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if cfg.context > cfg.max_len:
        raise options.UsageError(f"--context {cfg.context} exceeds --max-len {cfg.max_len}")
    try:
        cfg.model_config()
    except ValueError as exc:
        raise options.UsageError(str(exc)) from None
    manifest = train(cfg, args.out, progress=not args.quiet)
    final = manifest["final_val"]
    unigram = manifest["unigram_bits_per_byte"]["cross_entropy"]
    print(
        f"final validation loss {final['loss_nats']:.4f} nats/byte = "
        f"{final['bits_per_byte']:.3f} bits/byte (unigram baseline {unigram:.3f} bits/byte); "
        f"{manifest['steps_done']} steps in {manifest['wall_time_s']:.0f} s; saved to {args.out}"
    )
    return 0
