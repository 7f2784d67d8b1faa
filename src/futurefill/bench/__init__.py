"""Benchmarks: the quadratic-against-quasilinear story, measured on this machine.

Run as ``futurefill bench <subcommand> [--preset ...] [--out DIR] [options]``. Every subcommand
checks each method's outputs against a float64 reference (and exits with status 1, loudly, when
one differs), warms up, reports the median of repeated runs and every step's latency, records the
machine (CPU, cores, torch threads, versions, device, dtype, git commit, load average before and
after), and skips a method where its projected time exceeds ``--budget``. The harness is
:mod:`futurefill.bench.common`; each subcommand is one :class:`~futurefill.bench.common.Benchmark`
description (its options, cells, one run, table sections, plots and CSV columns) in
:mod:`~futurefill.bench.layer` (layer, prompt), :mod:`~futurefill.bench.model` (model, context)
or :mod:`~futurefill.bench.fork` (fork).
The harness's parts, a module each: :mod:`~futurefill.bench.options` (config fields as options),
:mod:`~futurefill.bench.machine` (the machine record, threads, device),
:mod:`~futurefill.bench.timing` (clock, steps, latency), :mod:`~futurefill.bench.runs` (one cell's
repeated runs and agreement), :mod:`~futurefill.bench.budget` (projections, skips, ratios,
slopes), :mod:`~futurefill.bench.tables` (the report's tables) and :mod:`~futurefill.bench.plots`;
:mod:`~futurefill.bench.presets` names the benchmarks and their presets.

Threads: ``--threads`` (default: every available core) sets torch's intra-op threads. A decoding
step is microseconds of work; where other processes keep the cores busy, a multi-threaded op
waits for a descheduled thread (milliseconds): the load is recorded and a warning printed; use
``--threads 1`` there.

Subcommands
-----------
layer
    One online convolution (channels D, batch B), L steps swept over powers of two: every
    registered method, recompute (an FFT of the prefix per step: no cache) and offline (one
    FFT: the floor); asked for by name, ``compiled-<method>``, the compiled layer step. Total
    time, time per token, cache bytes, log-log slope, each step's host time and (CUDA events)
    device time; ``--steps S`` times the last S steps of each L after a prefill of the rest.
prompt
    A prompt of P inputs prefilled at once, then K steps, over a grid of P and K.
model
    The ConvLM end to end: L tokens generated greedily, tokens/s and token latency against L,
    per method and mixer, logits checked against the model's float64 forward pass.
context
    The ConvLM's decode tokens/s after a prompt of P tokens (``--prompt-lens P [P ...]
    --new-tokens K``); greedy tokens compared across methods. ``--preset hyenadna``: a
    HyenaDNA-large-1m-shaped :class:`~futurefill.pretrained.HyenaLM` after prompts of 2^12 ..
    2^17 tokens, recompute (the Hugging Face port's generate()) and the compiled step included.
fork
    N samples of K tokens from one prompt of P tokens (``--samples 16 --new-tokens 256
    --prompt-lens 32768``, the defaults: a HyenaDNA-small-32k-shaped model, sampled): one
    ``generate(num_return_sequences=N)`` (one prefill, forked) against N separate calls and one
    call with the prompt repeated N times; wall time, prefill / decode, peak memory, and fork's
    samples checked identical to repeated's.
serve
    Requests arriving over time, served by continuous batching, static batching and one at a
    time (:mod:`~futurefill.bench.serve`): throughput, time to first token, inter-token latency
    (p50 / p99), of the bundled model or a HyenaDNA-shaped one (``--shape``).
paper
    The FutureFill paper's experiment (:mod:`~futurefill.bench.paper`): its STU-only model
    shape (8 layers, width 1024, 515.9M parameters) generating 16,384 tokens from a one-token
    prompt, each method eager and compiled, in float32 and bfloat16; seconds beside the paper's
    (Epoched-FutureFill 52.22 s, naive 111.92 s on an H100), runs past a budget projected.
all
    The five (not serve or paper) with one preset into one directory (``make demo``:
    ``--preset quick``).

Files written to ``--out`` (default ``results/``): ``<name>.json`` (everything: machine, config,
the equivalent command, one row per method and size with its status, ``ok``, ``skipped
(projected X s > budget Y s)`` or ``FAILED (...)``, the times of every repeat, the mean step time
per dyadic chunk of positions, the latency distribution and trace, ratios, slopes, errors),
``<name>.csv`` (a row per method and size), ``<name>_table.md`` (the table printed),
``layer_per_position.csv`` and ``model_per_position.csv``, and the PNG plots.
"""
