"""Train the byte-level demo model on Python's documentation topics (``futurefill train``).

The run is deterministic for a given seed and thread count: the initial weights come from
``torch.manual_seed(seed)`` and the batches from a separate generator seeded with ``seed + 1``.
The output directory receives, every ``--save-every`` steps and at the end:

- ``model.safetensors`` and ``config.json``: the model (:meth:`ConvLM.save`);
- ``training.json``: the manifest: the command that reproduces the run, seed, steps, wall time,
  machine, corpus version, the loss history, the final validation loss (nats and bits per byte)
  beside the unigram baseline, and the loss on ``heldout.bin``;
- ``heldout.bin``: the first ``--heldout-windows`` evaluation windows of the validation split,
  kept beside the model so its recorded loss can be checked without depending on the Python
  release (whose documentation text, hence validation split, changes between versions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from futurefill.demo import data as corpus
from futurefill.staging import staged

__all__ = [
    "HELDOUT_FILE",
    "MANIFEST_FILE",
    "TrainConfig",
    "evaluate",
    "heldout_loss",
    "train",
]

MANIFEST_FILE = "training.json"
HELDOUT_FILE = "heldout.bin"


@dataclass
class TrainConfig:
    """Everything that determines a training run (model shape, optimiser, schedule, data)."""

    # Model: a ConvLMConfig with vocab_size 256. max_len bounds prompt + generated tokens at
    # inference time (the convolution filters are this long); training uses ``context`` only.
    mixer: str = "stu_tensordot"
    d_model: int = 128
    n_layers: int = 4
    mlp_ratio: int = 4
    num_eigh: int = 24
    max_len: int = 2048
    # Optimisation: AdamW, linear warm-up then cosine decay to ``min_lr_ratio * lr``.
    steps: int = 1000
    batch_size: int = 16
    context: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1  # matrices only (dim >= 2), not norms or biases
    grad_clip: float = 1.0
    # Data, evaluation and bookkeeping.
    val_fraction: float = corpus.DEFAULT_VAL_FRACTION
    eval_every: int = 100  # loss on the whole validation split every this many steps (0: end only)
    heldout_windows: int = 8  # windows stored in heldout.bin for the checkpoint's self-test
    save_every: int = 0  # 0: save at the end only
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default

    def model_config(self):
        from futurefill.model import ConvLMConfig

        return ConvLMConfig(
            vocab_size=corpus.VOCAB_SIZE,
            d_model=self.d_model,
            n_layers=self.n_layers,
            max_len=self.max_len,
            mixer=self.mixer,
            mlp_ratio=self.mlp_ratio,
            num_eigh=self.num_eigh,
        )

    def command(self, out: str | os.PathLike) -> str:
        """The ``futurefill train`` command line that reproduces this run."""
        parts = ["futurefill", "train", "--out", str(out)]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            parts += ["--" + field.name.replace("_", "-"), str(value)]
        return shlex.join(parts)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, ids: torch.Tensor, context: int, batch_size: int = 16
) -> float:
    """Mean next-byte cross-entropy (nats) of ``model`` over the non-overlapping windows of ``ids``.

    Every window has ``context`` predictions, each conditioned on the bytes before it inside the
    window (see :func:`futurefill.demo.data.windows`).
    """
    was_training = model.training
    model.eval()
    x, y = corpus.windows(ids, context)
    total = 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])  # (b, context, vocab)
        total += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).double(),
            y[i : i + batch_size].reshape(-1),
            reduction="sum",
        ).item()
    model.train(was_training)
    return total / y.numel()


def heldout_loss(model: torch.nn.Module, directory: str | os.PathLike) -> float:
    """The loss of ``model`` on the ``heldout.bin`` of a checkpoint directory (nats per byte)."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    ids = corpus.encode((directory / HELDOUT_FILE).read_bytes())
    return evaluate(model, ids, manifest["heldout"]["context"])


# --------------------------------------------------------------------------- training


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
    }


def train(
    cfg: TrainConfig,
    out: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    data: bytes | None = None,
) -> dict[str, Any]:
    """Train a ConvLM on the corpus (default: :func:`futurefill.demo.data.load_corpus`).

    Returns the manifest (also written to ``out/training.json`` when ``out`` is given, beside the
    model and ``heldout.bin``).
    """
    from futurefill.model import ConvLM

    if cfg.context + 1 > cfg.max_len:
        raise ValueError(f"context {cfg.context} must be below max_len {cfg.max_len}")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    raw = corpus.load_corpus() if data is None else data
    split = corpus.split_corpus(raw, cfg.val_fraction)
    heldout = split.val[: cfg.heldout_windows * cfg.context + 1]

    torch.manual_seed(cfg.seed)
    model = ConvLM(cfg.model_config())
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )

    manifest: dict[str, Any] = {
        "command": cfg.command(out if out is not None else "OUT"),
        "seed": cfg.seed,
        "config": dataclasses.asdict(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus": {
            "source": "pydoc_data.topics (sorted keys, joined by newlines, UTF-8 bytes)",
            "python": platform.python_version(),
            "sha256": corpus.corpus_sha256(raw),
            "bytes": len(raw),
            "train_bytes": len(split.train),
            "val_bytes": len(split.val),
        },
        "unigram_bits_per_byte": corpus.unigram_bits(split.train, split.val),
        "history": [],
        "steps_done": 0,
    }

    def checkpoint(final: bool) -> None:
        if out is None:
            return
        manifest["complete"] = final
        with staged(out, last=(MANIFEST_FILE,)) as directory:  # all files or, interrupted, none
            model.save(directory)
            (directory / HELDOUT_FILE).write_bytes(bytes(heldout.tolist()))
            (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(range(cfg.steps), desc="train", disable=not progress, dynamic_ncols=True)
    val_loss = float("nan")
    for step in bar:
        x, y = corpus.sample_batch(split.train, cfg.batch_size, cfg.context, generator)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        logits = model(x)  # (B, context, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        train_loss = loss.item()
        record: dict[str, Any] = {"step": step + 1, "train_loss": train_loss}
        last = step + 1 == cfg.steps
        if cfg.eval_every > 0 and ((step + 1) % cfg.eval_every == 0 or last):
            val_loss = evaluate(model, split.val, cfg.context)
            record["val_loss"] = val_loss
            bar.write(
                f"step {step + 1:5d}  train {train_loss:.4f}  val {val_loss:.4f} "
                f"({corpus.nats_to_bits(val_loss):.3f} bits/byte)"
            )
        manifest["history"].append(record)
        manifest["steps_done"] = step + 1
        manifest["wall_time_s"] = round(time.perf_counter() - start, 1)
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_loss:.3f}")
        if cfg.save_every > 0 and (step + 1) % cfg.save_every == 0 and not last:
            checkpoint(final=False)
    bar.close()
    train_time = time.perf_counter() - start

    final = val_loss if cfg.eval_every > 0 else evaluate(model, split.val, cfg.context)
    manifest["train_time_s"] = round(train_time, 1)
    manifest["wall_time_s"] = round(time.perf_counter() - start, 1)
    # CPU seconds of this process, all threads: the cost independent of other load on the machine.
    manifest["cpu_time_s"] = round(time.process_time() - cpu_start, 1)
    manifest["machine"] = _machine()
    manifest["final_val"] = {
        "loss_nats": final,
        "bits_per_byte": corpus.nats_to_bits(final),
        "windows": len(corpus.windows(split.val, cfg.context)[0]),
        "context": cfg.context,
    }
    manifest["heldout"] = {
        "file": HELDOUT_FILE,
        "description": "first bytes of the validation split; loss over its evaluation windows",
        "bytes": len(heldout),
        "sha256": hashlib.sha256(bytes(heldout.tolist())).hexdigest(),
        "context": cfg.context,
        "loss_nats": evaluate(model, heldout, cfg.context),
    }
    checkpoint(final=True)
    return manifest
