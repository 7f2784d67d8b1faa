"""Benchmarks: the quadratic-against-quasilinear story, measured on this machine.

Run as ``futurefill bench <subcommand> [--preset quick|full] [--out DIR] [options]``; every
subcommand checks that each method's outputs match a float64 offline reference (and exits with
status 1, loudly, when one does not), warms up, reports the median of repeated runs, records the
machine (CPU, cores, torch threads, versions, device, dtype, git commit), and skips a method at
sizes where its projected time exceeds ``--budget`` (recorded as ``skipped (projected ...)``).

Threads: ``--threads`` (default: every available core) sets torch's intra-op threads for the
run and is recorded. A decoding step is microseconds of work; on a machine where other processes
keep the cores busy, a multi-threaded op waits for a descheduled thread (milliseconds), so the
load average is recorded and a warning printed; use ``--threads 1`` there.

Subcommands
-----------
layer
    One online convolution (channels D, batch B), generated length L swept over powers of two.
    Methods: ``naive`` (direct dot product per step), ``epoched`` and ``continuous`` (FutureFill),
    ``recompute`` (a full FFT convolution of the prefix at every step: no cache) and ``offline``
    (one FFT convolution of the whole sequence: the floor). Reports total time, time per token,
    peak cache bytes and the fitted log-log slope of total time against L.
prompt
    Prompt of length P (prefilled at once), then K generated steps, over a grid of P and K:
    prefill time, decode time and cache bytes per engine method.
model
    The ConvLM end to end: L tokens generated greedily one at a time from scratch, tokens/s
    against L, per method and per mixer, checked against the model's full forward pass.
context
    The ConvLM's decode throughput at context length P: prefill P prompt tokens, then decode K
    tokens greedily (``--prompt-lens P [P ...] --new-tokens K``); decode tokens/s, prefill time
    and cache bytes against P, per method and mixer; logits checked against the float64 forward
    pass and greedy tokens compared across methods. Measures the project target with
    ``futurefill bench context --prompt-lens 32768 --new-tokens 256``. ``--mixers hyenadna``
    builds a HyenaDNA-shaped :class:`~futurefill.pretrained.HyenaLM` instead;
    ``--preset hyenadna`` is HyenaDNA-large-1m's shape (8 layers, width 256) after prompts of
    2^12 .. 2^18 tokens, recompute (the HF port's generate()) included.
all
    layer, prompt, model and context with one preset into one directory (``make demo`` runs
    ``futurefill bench all --preset quick --out results``).

Output files (in ``--out``, default ``results/``)
------------------------------------------------
``<name>.json``
    Everything: machine, resolved config, the equivalent command, one row per (method, size) with
    status (``ok``, ``skipped (projected X s > budget Y s)``, ``FAILED (...)``), times of every
    repeat, per-position chunk times, fitted slopes, time ratios at the largest size both methods
    reached, agreement errors.
``<name>.csv``
    One row per (method, size): status, median times, cache bytes, error, repeats.
``<name>_table.md``
    The table printed on the terminal (Markdown).
``layer_per_position.csv``, ``model_per_position.csv``
    Mean time per step over dyadic chunks of positions [n, 2n), per method and length (for
    ``context``, the ``chunks`` of each row of ``context.json``).
PNG plots
    ``layer_total_time.png`` (log-log, every method, slope in the legend),
    ``layer_time_per_token.png`` (against position), ``layer_cache_bytes.png``;
    ``prompt_decode_time.png``, ``prompt_prefill_time.png``, ``prompt_cache_bytes.png``;
    ``model_tokens_per_s.png``, ``model_time_per_token.png``, ``model_cache_bytes.png``;
    ``context_tokens_per_s.png`` (decode tokens/s against P, log-log), ``context_prefill_time.png``,
    ``context_cache_bytes.png``.
"""
