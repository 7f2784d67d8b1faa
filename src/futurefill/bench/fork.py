"""``futurefill bench fork``: many samples from one prompt, the prompt prefilled once.

A HyenaLM shaped like HyenaDNA-small-32k (random weights, seeded) and one DNA prompt of P tokens
(``[CLS]`` and random nucleotides, seeded); N samples of K new tokens each, sampled (temperature
1, the tokenizer's nucleotides only, from a seeded ``torch.Generator``), drawn three ways with
:func:`futurefill.generate`, and a fourth through the server when asked:

* ``fork``: one call with ``num_return_sequences=N``: the prompt prefilled once, its row forked
  into the N rows (:meth:`~futurefill.decoder.Decoder.fork`), the rows decoded together;
* ``separate``: N calls of one sample each, each prefilling the prompt (N separate requests;
  sample i drawn from a generator seeded ``seed + i``);
* ``repeated``: one call with the prompt repeated N times in the batch: N prefills, then the rows
  decoded together;
* ``server`` (only when asked, ``--methods ... server``): the model saved to a temporary
  directory and served by ``futurefill serve`` (a subprocess on loopback, ``--slots N``, the
  prompt prefilled in one pass), then, for each run, a prompt never sent before: a greedy request
  of a few tokens (cold: a prefill), the same request again (a prefix-cache hit), and a request of
  N samples of K tokens (``n`` = N, temperature 1: forked from the cached state), each streamed
  and timed from sending it to its first chunk with text and to its end.

Each way's wall time, split into its prefill (from the call to its first token: the prompts'
prefills and the forks) and its decode (the K - 1 steps after), and the process's peak resident
memory above its size before the run (Linux's VmHWM, reset before each run; None elsewhere).
``fork`` and ``repeated`` draw from one generator of the same seed over the same batch layout, so
their tokens must be identical sample by sample: checked, a difference fails the run. Every way's
first sample is also checked against the float64 forward pass over its prompt and tokens (the
logits it sampled each token from); the server's, its greedy tokens' log-probabilities. The
server's hit must give the cold request's tokens and ``/metrics`` must count one miss, then one
hit: else the run fails. Its row's wall time and prefill/decode are the N-sample request's (to
its end, and to its first token); its own fields hold the cold and hit times to first token
(medians), their ratio, the prefix-cache lookups and bytes, and the server's resident memory.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from futurefill.bench import common, served
from futurefill.bench.model import HYENADNA_LARGE_1M, MODEL_TOL, References
from futurefill.bench.options import DTYPES, LENGTH, POSITIVE, SIZE, Options, lengths_option, option
from futurefill.bench.runs import Cell, Setting, rel_err, repeat_runs
from futurefill.bench.tables import Section, fmt_bytes, fmt_seconds, seconds_of
from futurefill.bench.timing import paused_gc, sync
from futurefill.generation import generate
from futurefill.online import METHODS
from futurefill.pretrained import dna
from futurefill.serving.prefix_cache import DEFAULT_PREFIX_CACHE_BYTES

# hyenadna-small-32k-seqlen: the release's other hyper-parameters are large-1m's (order 2,
# emb_dim 5, filter FFN 64 wide with 2 inner layers, activation frequency 10, MLP 4 x width);
# its filters span 32,768 positions and 2 (``--d-model 256 --n-layers 4`` give its shape).
HYENADNA_SMALL_32K = {**HYENADNA_LARGE_1M, "max_len": 32_770}
WAYS = ("fork", "separate", "repeated")  # the default ways
ALL_WAYS = (*WAYS, "server")
TTFT_TOKENS = 8  # tokens of the server's greedy cold and hit requests (at most K)
# The float32 forward itself drifts from float64 like sqrt(P) (the context benchmark's hyenadna
# preset: 5.7e-5 at P = 2^15 for 8 layers), every way alike.
FORK_TOL = {**MODEL_TOL, torch.float32: 3e-4}


@dataclasses.dataclass
class ForkConfig(Options):
    """Options of ``bench fork`` (the CLI flags have the same names)."""

    prompt_lens: tuple[int, ...] = lengths_option(
        (32768,),
        "prompt lengths P: the one prompt every sample continues",
        aliases=("--prompt-len",),
    )
    new_tokens: int = option(256, "tokens K sampled per sample", type=LENGTH)
    samples: int = option(16, "samples N drawn from the prompt (num_return_sequences)", type=SIZE)
    methods: tuple[str, ...] = option(
        WAYS,
        "ways of drawing the N samples (server: through futurefill serve, with a cold request and "
        "a prefix-cache hit first)",
        choices=ALL_WAYS,
        nargs="+",
        aliases=("--ways",),
    )
    engine: str = option(
        "continuous", "online convolution engine (generate's method)", choices=METHODS
    )
    d_model: int = option(256, "model width (HyenaDNA-small-32k: 256)", type=SIZE)
    n_layers: int = option(4, "layers (HyenaDNA-small-32k: 4)", type=SIZE)
    vocab_size: int = option(
        16, "vocabulary: the DNA tokenizer's 12 ids padded to 16, as the checkpoints", type=SIZE
    )
    budget: float = option(300.0, "seconds one way's runs may take (projected)", type=POSITIVE)

    @property
    def longest(self) -> int:
        return max(self.prompt_lens) + self.new_tokens


def check(config: ForkConfig) -> None:
    """The vocabulary must hold the DNA tokenizer's ids (the samples are nucleotides); the
    server way runs on the CPU with at most 1024 slots (``futurefill serve``'s bounds)."""
    need = len(dna.SPECIAL_TOKENS) + len(dna.NUCLEOTIDE_IDS)
    if config.vocab_size < need:
        raise ValueError(f"--vocab-size {config.vocab_size} must hold the DNA tokenizer's {need}")
    if "server" in config.methods:
        if torch.device(config.device).type != "cpu":
            raise ValueError(
                "--methods server: futurefill serve runs the model on the CPU here (leave server "
                "out of --methods; bench all --preset full: --skip fork)"
            )
        if config.samples > 1024:
            raise ValueError(f"--methods server: --samples {config.samples} > 1024 slots")


def build_model(config: ForkConfig, max_len: int, device, dtype):
    """The seeded HyenaDNA-small-32k-shaped model (``max_len`` raised where the runs need more
    than the release's 32,770 positions) and its float64 reference copy."""
    from futurefill.pretrained import HyenaLM, HyenaLMConfig

    torch.manual_seed(config.seed)
    hyper = {**HYENADNA_SMALL_32K, "max_len": max(HYENADNA_SMALL_32K["max_len"], max_len)}
    shape = {"d_model": config.d_model, "n_layers": config.n_layers, "d_inner": 4 * config.d_model}
    model = HyenaLM(HyenaLMConfig(vocab_size=config.vocab_size, **shape, **hyper))
    model = model.eval().to(device=device, dtype=dtype)
    return model, copy.deepcopy(model).to(dtype=torch.float64)


@dataclasses.dataclass(frozen=True)
class Operands:
    """What a cell's runs share: the model, its float64 references, the prompt (1, P) and the
    sampling setting."""

    model: Any
    references: References
    prompt: torch.Tensor
    samples: int
    engine: str
    seed: int


def open_model(config: ForkConfig, max_len: int):
    """``open_group`` and ``open_cell``: one model; a cell's prompt is ``[CLS]`` and P - 1 random
    nucleotides (A, C, G, T; seeded), the longest prompt's first P tokens."""
    gen = torch.Generator().manual_seed(config.seed)
    bases = torch.tensor(dna.NUCLEOTIDE_IDS[:4])
    prompt = bases[torch.randint(0, 4, (1, max_len), generator=gen)]
    prompt[0, 0] = dna.CLS

    def open_group(_: None, device: torch.device, dtype: torch.dtype) -> tuple:
        return (*build_model(config, max_len, device, dtype), prompt.to(device))

    def open_cell(group: tuple, cell: Cell) -> Operands:
        model, reference_model, tokens = group
        ids = tokens[:, : cell.fields["P"]]
        return Operands(
            model, References(reference_model), ids, config.samples, config.engine, config.seed
        )

    return open_group, open_cell


def _proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM); None off Linux."""
    with contextlib.suppress(OSError), open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> int | None:
    """Reset this process's resident high-water mark (``echo 5 > /proc/self/clear_refs``); its
    resident size now, or None where the mark cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _proc_status("VmRSS")


def draw(way: str, operands: Operands, new_tokens: int, device: torch.device) -> dict[str, Any]:
    """The N samples drawn ``way``, timed: ``seconds``, ``prefill`` (from each call to its first
    token, summed over the calls) and ``decode`` (the rest); ``tokens`` (N, K) and the first
    sample's ``logits`` (K, vocab). The garbage collector is paused, as in every timed run; a
    call's decoding state is held in a reference cycle (the session and its modules' states)
    until it runs, so ``separate`` collects after each call (timed: a server would pay it too),
    else its calls' states would pile up (16 x 0.8 GB at P = 2^15)."""
    model, prompt, n = operands.model, operands.prompt, operands.samples
    options = {"do_sample": True, "allowed_token_ids": dna.NUCLEOTIDE_IDS, "return_logits": True}
    options["method"] = operands.engine
    calls = [(prompt, n, operands.seed)] if way == "fork" else []
    calls += [(prompt, 1, operands.seed + i) for i in range(n)] if way == "separate" else []
    calls += [(prompt.repeat(n, 1), 1, operands.seed)] if way == "repeated" else []
    outputs, prefill, clock = [], 0.0, time.perf_counter
    with paused_gc():
        sync(device)
        began = clock()
        for ids, each, seed in calls:
            first: list[float] = []

            def put(_: torch.Tensor, first: list[float] = first) -> None:
                if not first:
                    sync(device)
                    first.append(clock())

            generator = torch.Generator(device=device).manual_seed(seed)
            called = clock()
            out = generate(
                model,
                ids,
                new_tokens,
                num_return_sequences=each,
                generator=generator,
                streamer=put,
                **options,
            )
            outputs.append(out)
            prefill += first[0] - called
            if len(calls) > 1:
                gc.collect()  # the call's decoding state: freed by the cycle collector only
        sync(device)
        seconds = clock() - began
    tokens = torch.cat([o.tokens for o in outputs])
    record = {"seconds": seconds, "prefill": prefill, "decode": seconds - prefill, "chunks": []}
    return record | {"tokens": tokens, "logits": outputs[0].logits[0]}


def _served_prompt(length: int, seed: int, sent: set[str]) -> str:
    """A DNA prompt of ``length`` tokens (``[CLS]`` and ``length - 1`` random nucleotides, A, C,
    G, T) as the text a client sends, drawn from ``seed`` on until it is none of ``sent``."""
    bases = "".join(dna.CHARACTERS[:4])
    for attempt in range(1000):
        gen = torch.Generator().manual_seed((seed + 7919 * attempt) % 2**63)
        picks = torch.randint(0, 4, (length - 1,), generator=gen).tolist()
        text = "".join(bases[i] for i in picks)
        if text not in sent:
            sent.add(text)
            return text
    raise ValueError(f"no DNA prompt of {length} tokens left unsent")


def _lookups(metrics: dict[str, float]) -> dict[str, int]:
    """The prefix cache's hits and misses in a ``/metrics`` reading."""
    name = "futurefill_prefix_cache_lookups_total"
    return {r: int(metrics.get(f'{name}{{result="{r}"}}', 0)) for r in ("hit", "miss")}


def measure_served(operands: Operands, cell: Cell, setting: Setting) -> dict[str, Any]:
    """The ``server`` way (module docstring): the model saved and served by ``futurefill serve``
    for the cell; a warm-up (a short prompt, twice, N samples), then up to ``repeats`` runs of a
    fresh prompt each: cold and hit greedy requests of ``min(8, K)`` tokens, then the N samples
    of K tokens. The row as :func:`measure`'s, from the N-sample requests, and the server's
    fields; a hit whose tokens differ from the cold request's, or lookups other than one miss
    then hits, fail it."""
    prompt_len, new_tokens, n = cell.fields["P"], cell.fields["K"], operands.samples
    short = min(TTFT_TOKENS, new_tokens)
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    sent: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="futurefill-fork-") as tmp:
        name = "hyenalm-fork"
        operands.model.save(Path(tmp) / name)
        options = ["--slots", str(n), "--threads", str(torch.get_num_threads())]
        options += ["--prefill-chunk", str(prompt_len), "--queue-size", "4"]
        began = time.perf_counter()
        with served.serve(Path(tmp) / name, options) as server:
            started = time.perf_counter() - began

            def body(text: str, **fields: Any) -> dict[str, Any]:
                return {"model": name, "prompt": text, "stream": True, **fields}

            greedy = {"max_tokens": short, "temperature": 0, "logprobs": 0}
            sampled = {"max_tokens": new_tokens, "temperature": 1.0, "seed": operands.seed}
            warm = _served_prompt(min(prompt_len, 32), operands.seed - 1, sent)
            for _ in range(2):  # a prefill and a fork, then a restore into N rows
                server.complete(body(warm, n=n, max_tokens=min(2, new_tokens), temperature=1.0))
            rss_warm, _ = server.resident_bytes()

            def run_once() -> tuple[dict[str, Any], tuple[torch.Tensor, ...]]:
                text = _served_prompt(prompt_len, operands.seed + 1 + len(runs), sent)
                before = _lookups(server.metrics())
                cold = server.complete(body(text, **greedy))
                after_cold = _lookups(server.metrics())
                hit = server.complete(body(text, **greedy))
                after_hit = _lookups(server.metrics())
                many = server.complete(body(text, n=n, **sampled))
                metrics = server.metrics()
                after = _lookups(metrics)
                counts = [
                    (a["miss"] - b["miss"], a["hit"] - b["hit"])
                    for b, a in ((before, after_cold), (after_cold, after_hit), (after_hit, after))
                ]
                where = f"run {len(runs) + 1}"
                if counts != [(1, 0), (0, 1), (0, 1)]:
                    problems.append(
                        f"{where}: prefix-cache (misses, hits) per request {counts}, expected "
                        "[(1, 0), (0, 1), (0, 1)]"
                    )
                if hit.texts != cold.texts:
                    problems.append(
                        f"{where}: the hit's tokens {hit.texts} differ from {cold.texts}"
                    )
                lengths = [len(t) for t in many.texts]
                if lengths != [new_tokens] * n:
                    problems.append(
                        f"{where}: the {n} samples' lengths {lengths}, not {new_tokens}"
                    )
                runs.append(
                    {
                        "cold_ttft": cold.first_token_s,
                        "hit_ttft": hit.first_token_s,
                        "cold_s": cold.seconds,
                        "hit_s": hit.seconds,
                        "match": hit.texts == cold.texts,
                        "logprob_diff": max(
                            (
                                abs(a - b)
                                for a, b in zip(hit.logprobs[0], cold.logprobs[0], strict=False)
                            ),
                            default=0.0,
                        ),
                        "cache_bytes": int(metrics.get("futurefill_prefix_cache_bytes", 0)),
                        "lookups": after,
                    }
                )
                seconds, first = many.seconds, many.first_token_s
                record = {"seconds": seconds, "prefill": first, "decode": seconds - first}
                record.update(chunks=[], after_prefill=None, peak=None)
                ids = dna.encode(text)[None]
                tokens = dna.encode(cold.texts[0])[1:]
                return record, (ids, tokens, torch.tensor(cold.logprobs[0], dtype=torch.float64))

            def check(outputs: tuple[torch.Tensor, ...]) -> float:
                ids, tokens, logprobs = outputs
                fed = torch.cat([ids, tokens[None, :-1]], dim=1).to(operands.prompt.device)
                reference = operands.references(fed)[0, ids.shape[1] - 1 :]
                chosen = reference.log_softmax(dim=-1)[torch.arange(len(tokens)), tokens.cpu()]
                return rel_err(logprobs, chosen.cpu())

            row = repeat_runs(run_once, check, setting)
            rss_end, peak = server.resident_bytes()
    if server.exit_code != 0:
        problems.append(f"futurefill serve exited with status {server.exit_code} on SIGTERM")
    for key in ("cache_bytes_after_prefill", "peak_cache_bytes"):
        row.pop(key, None)
    cold = statistics.median(r["cold_ttft"] for r in runs)
    hit = statistics.median(r["hit_ttft"] for r in runs)
    row.update(
        peak_rss_bytes=None,
        tokens_per_s=n * new_tokens / row["total_s"],
        cold_ttft_s=cold,
        hit_ttft_s=hit,
        ttft_ratio=cold / hit,
        cold_ttft_times_s=[r["cold_ttft"] for r in runs],
        hit_ttft_times_s=[r["hit_ttft"] for r in runs],
        cold_request_times_s=[r["cold_s"] for r in runs],
        hit_request_times_s=[r["hit_s"] for r in runs],
        ttft_tokens=short,
        hit_tokens_match=all(r["match"] for r in runs),
        hit_logprob_max_diff=max(r["logprob_diff"] for r in runs),
        prefix_cache_bytes=runs[-1]["cache_bytes"],
        prefix_cache_lookups=runs[-1]["lookups"],
        server_start_s=started,
        server_rss_after_warmup_bytes=rss_warm,
        server_rss_end_bytes=rss_end,
        server_peak_rss_bytes=peak,
        server_exit_code=server.exit_code,
        server_options=" ".join(options),
    )
    if problems and row["status"] == "ok":
        row["status"] = "FAILED (" + "; ".join(problems) + ")"
    return row


def measure(way: str, operands: Operands, cell: Cell, setting: Setting) -> dict[str, Any]:
    """Draw the cell's N samples of K tokens ``way`` up to ``repeats`` times; the row: wall time,
    prefill and decode (medians), peak resident bytes (the largest run's), the first run's tokens
    under ``_tokens`` for :func:`compare`, and the first sample's logits checked against the
    float64 forward pass. The server way: :func:`measure_served`."""
    if way == "server":
        return measure_served(operands, cell, setting)
    new_tokens, peaks, first = cell.fields["K"], [], []

    def run_once() -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor]]:
        gc.collect()
        before = _reset_peak_rss()
        record = draw(way, operands, new_tokens, setting.device)
        after = _proc_status("VmHWM")
        peaks.append(None if before is None or after is None else max(0, after - before))
        tokens, logits = record.pop("tokens"), record.pop("logits")
        if not first:
            first.append(tokens)
        record.update(after_prefill=None, peak=None)
        return record, (tokens[0], logits)

    def check(outputs: tuple[torch.Tensor, torch.Tensor]) -> float:
        tokens, logits = outputs
        prompt_len = operands.prompt.shape[1]
        fed = torch.cat([operands.prompt, tokens[None, :-1]], dim=1)
        reference = operands.references(fed)[0, prompt_len - 1 :]
        return rel_err(logits, reference)

    row = repeat_runs(run_once, check, setting)
    for key in ("cache_bytes_after_prefill", "peak_cache_bytes"):
        row.pop(key, None)
    known = [p for p in peaks if p is not None]
    row["peak_rss_bytes"] = max(known) if known else None
    row["tokens_per_s"] = operands.samples * new_tokens / row["total_s"]
    return row | {"_tokens": first[0]}


def compare(rows: list[dict[str, Any]], operands: Operands, tol: float) -> None:
    """``fork``'s tokens against ``repeated``'s, sample by sample (the same seed and batch
    layout: they must be identical; a difference fails ``fork``'s row); removes ``_tokens``."""
    tokens = {row["method"]: row.pop("_tokens", None) for row in rows}
    by = {row["method"]: row for row in rows}
    if "fork" not in by or "repeated" not in by:
        return
    fork, repeated = by["fork"], by["repeated"]
    if fork["status"] != "ok" or repeated["status"] != "ok":
        return
    same = (tokens["fork"] == tokens["repeated"]).all(dim=1)
    for row in (fork, repeated):
        row["tokens_match"] = bool(same.all())
        row["samples_matching"] = int(same.sum())
    if not same.all():
        sample = int((~same).nonzero()[0])
        step = int((tokens["fork"][sample] != tokens["repeated"][sample]).nonzero()[0])
        fork["status"] = (
            f"FAILED (sample {sample}'s tokens differ from repeated's from token {step} on; "
            f"{int(same.sum())} of {len(same)} samples identical)"
        )


def token_notes(report: dict[str, Any]) -> list[str]:
    """A line per cell saying whether ``fork``'s samples equal ``repeated``'s; the server way's
    lines (:func:`server_notes`)."""
    cfg = report["config"]
    lines = [
        f"- P={r['P']}: fork's {cfg['samples']} samples of {r['K']} tokens "
        + (
            "identical to repeated's, sample by sample (the same generator seed and batch layout)"
            if r["tokens_match"]
            else f"differ from repeated's: {r['samples_matching']} of {cfg['samples']} identical"
        )
        for r in report["rows"]
        if r["method"] == "fork" and "tokens_match" in r
    ]
    peaks = [
        r
        for r in report["rows"]
        if r["status"] == "ok" and r["method"] != "server" and r["peak_rss_bytes"] is None
    ]
    lines += ["- peak memory: not measured (needs Linux's /proc)"] if peaks else []
    return lines + server_notes(report)


def server_notes(report: dict[str, Any]) -> list[str]:
    """The server way's lines per cell: its times to first token cold and on a prefix-cache hit,
    the hit's tokens and the cache's lookups, its N-sample request against ``fork``'s, its
    memory."""
    cfg, lines = report["config"], []
    fork = {(r["P"], r["K"]): r for r in report["rows"] if r["method"] == "fork"}
    for r in report["rows"]:
        if r["method"] != "server" or "cold_ttft_s" not in r:
            continue

        def times(key: str, r: dict[str, Any] = r) -> str:
            return ", ".join(fmt_seconds(t) for t in r[key])

        at, n = f"- P={r['P']}: server", cfg["samples"]
        lines.append(
            f"{at} (futurefill serve {r['server_options']}; {r['repeats']} runs after a "
            f"warm-up): time to first token of a greedy {r['ttft_tokens']}-token request "
            f"for a prompt never sent (cold: a prefill) {fmt_seconds(r['cold_ttft_s'])}, the same "
            f"request again (a prefix-cache hit) {fmt_seconds(r['hit_ttft_s'])}: "
            f"**{r['ttft_ratio']:.1f}x** (medians; cold {times('cold_ttft_times_s')}, hit "
            f"{times('hit_ttft_times_s')})"
        )
        lookups = r["prefix_cache_lookups"]
        lines.append(
            f"{at}: the hit's tokens "
            + (
                "identical to the cold request's in every run (their log-probabilities within "
                f"{r['hit_logprob_max_diff']:.1e})"
                if r["hit_tokens_match"]
                else "DIFFER from the cold request's"
            )
            + f"; /metrics after the runs: {lookups['miss']} misses, {lookups['hit']} hits (the "
            f"warm-up's one and one, then one miss and two hits a run); the prefix cache held "
            f"{fmt_bytes(r['prefix_cache_bytes'])}"
        )
        other = fork.get((r["P"], r["K"]))
        versus = (
            f" (in-process fork, a prefill first: {fmt_seconds(other['prefill_s'])}, "
            f"{fmt_seconds(other['total_s'])}, decode {fmt_seconds(other['decode_s'])})"
            if other is not None and other["status"] == "ok"
            else ""
        )
        lines.append(
            f"{at}: the request of n={n} samples of {r['K']} tokens (temperature 1; its prompt a "
            f"hit, forked into {n} rows): first token {fmt_seconds(r['prefill_s'])}, all "
            f"{n} x {r['K']} tokens {fmt_seconds(r['total_s'])}, decode "
            f"{fmt_seconds(r['decode_s'])}" + versus
        )
        lines.append(
            f"{at}: resident memory {fmt_bytes(r['server_rss_after_warmup_bytes'])} after its "
            f"start-up ({fmt_seconds(r['server_start_s'])}) and warm-up, "
            f"{fmt_bytes(r['server_peak_rss_bytes'])} at its peak"
        )
    return lines


def peak_bytes(config: ForkConfig) -> int:
    """An upper estimate of the memory of the largest run: the decoding state of N rows (about
    two floats per position, channel and layer after the prompt: measured 4.8 GB for 16 rows at
    P = 2^15, width 256, 4 layers; three counted here), a forward pass in the working dtype
    and in float64 (eight activations of the MLP's width, 4 x d_model, each) and, with the
    server way, its prefix cache (1 GiB)."""
    size = DTYPES[config.dtype].itemsize
    state = config.samples * config.longest * config.n_layers * config.d_model * 3 * size
    cache = DEFAULT_PREFIX_CACHE_BYTES if "server" in config.methods else 0  # the server's
    return state + cache + config.longest * 8 * 4 * config.d_model * (8 + size)


def prefill_decode(row: dict[str, Any]) -> str:
    return f"{fmt_seconds(row['prefill_s'])} / {fmt_seconds(row['decode_s'])}"


FORK = common.Benchmark(
    name="fork",
    summary="N samples from one prompt: one prefill forked, against N prefills",
    config=ForkConfig,
    sizes=("P", "K"),
    cells=lambda c: [(p, c.new_tokens) for p in sorted(set(c.prompt_lens))],
    warm=lambda c: (min(c.warmup_len, *c.prompt_lens), min(c.warmup_len, c.new_tokens)),
    operands=open_model,
    measure=measure,
    peak_bytes=peak_bytes,
    tols=FORK_TOL,
    checked="of the first sample's logits from the float64 forward pass",
    title="Fork benchmark: {samples} samples of K = {new_tokens} tokens from one prompt of P",
    setting=(
        "A HyenaLM shaped like HyenaDNA-small-32k (order-2 Hyena, emb_dim 5, filter FFN 64 wide "
        "with 2 inner layers, MLP 4 x d_model): d_model {d_model}, {n_layers} layers, vocab "
        "{vocab_size}, random weights; engine {engine}; sampled (temperature 1, nucleotides "
        "only) with generator seed {seed} (separate: seed + i for sample i); fork: one generate("
        "num_return_sequences={samples}), separate: {samples} calls, repeated: one call with the "
        "prompt {samples} times; budget {budget:g} s per way."
    ),
    sections=(
        Section(
            "Wall time for all the samples (a/b: a's time over b's, b's speed-up):",
            "{m}",
            "total_s",
            seconds_of("total_s"),
            ratios=True,
        ),
        Section(
            "Prefill (from each call to its first token: the prompts' prefills and the forks) / "
            "decode (the K - 1 steps after), summed over the calls:",
            "{m} prefill / decode",
            "prefill_s",
            prefill_decode,
        ),
        Section(
            "Peak memory: the process's resident high-water mark during a run, above its size "
            "before it:",
            "{m}",
            "peak_rss_bytes",
            lambda r: fmt_bytes(r["peak_rss_bytes"]),
        ),
    ),
    plot_title="HyenaDNA-small-32k shape, N={samples}, K={new_tokens}",
    plots=(),
    columns=common.csv_columns(
        "method P K",
        "total_s prefill_s decode_s tokens_per_s peak_rss_bytes",
        "tokens_match samples_matching cold_ttft_s hit_ttft_s ttft_ratio hit_tokens_match "
        "prefix_cache_bytes server_peak_rss_bytes",
    ),
    ratios=(("separate", "fork"), ("repeated", "fork")),
    ratio_key="total_s",
    ratio_what="wall time",
    compare=compare,
    notes=token_notes,
    row_fields=("samples", "engine", "d_model", "n_layers"),
    check=check,
)


def run(config: ForkConfig) -> dict[str, Any]:
    """Run ``bench fork``; the report."""
    return common.run(FORK, config)
