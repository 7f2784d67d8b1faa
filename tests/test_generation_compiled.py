"""generate(compile=True): one torch.compile graph per token step, eager's tokens, no recompiles."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch._dynamo.utils import counters

from futurefill import ConvLM, ConvLMConfig, decoding, generate
from futurefill.model import MIXERS
from futurefill.nn import traced_step
from futurefill.online import METHODS, deamortized
from futurefill.pretrained import HyenaLM, HyenaLMConfig


def small_model(mixer: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if mixer == "hyenadna":
        config = HyenaLMConfig(vocab_size=16, d_model=8, n_layers=1, d_inner=16, max_len=400)
        return HyenaLM(config).eval()
    config = ConvLMConfig(d_model=8, n_layers=1, max_len=400, mixer=mixer, num_eigh=4)
    return ConvLM(config).eval()


@pytest.mark.parametrize("mixer", [*MIXERS, "hyenadna"])
def test_compiled_generation_gives_eager_tokens(mixer, device):
    model = small_model(mixer).to(device)
    ids = torch.randint(0, 16, (2, 9), generator=torch.Generator().manual_seed(1)).to(device)
    eager = generate(model, ids, 40, return_logits=True, tile_len=4)
    breaks = sum(counters["graph_break"].values())
    compiled = generate(model, ids, 40, compile=True, return_logits=True, tile_len=4)
    assert sum(counters["graph_break"].values()) == breaks  # the step is one graph
    assert torch.equal(compiled.tokens, eager.tokens)
    assert torch.allclose(compiled.logits, eager.logits, rtol=0, atol=1e-4)
    ragged = generate(model, ids, 12, prompt_lengths=[9, 1], compile=True)
    assert torch.equal(ragged[1], generate(model, ids[1:, :1], 12)[0])


def test_compiled_epoched_and_cross_layer_batched_levels_in_float64(device):
    """On CUDA: CUDA graphs (no cudagraph skipped), the deamortized jobs on a side stream."""
    torch.manual_seed(3)
    config = ConvLMConfig(d_model=8, n_layers=3, max_len=200, mixer="hyena", hyena_emb_dim=5)
    model = ConvLM(config).double().eval().to(device)
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(4)).to(device)
    skips = counters["inductor"]["cudagraph_skips"]
    methods = (
        ("continuous", {"tile_len": 4}),
        ("epoched", {"epoch_len": 7}),
        ("deamortized", {"tile_len": 2}),
        ("naive", {}),
    )
    # A 1-token prompt is an eager step, not a prefill: the traced step starts mid-tile.
    for (method, options), prompt in itertools.product(methods, (ids, ids[:, :1])):
        eager = generate(model, prompt, 150, method=method, return_logits=True, **options)
        compiled = generate(
            model, prompt, 150, method=method, compile=True, return_logits=True, **options
        )
        assert torch.equal(compiled.tokens, eager.tokens), method
        assert torch.allclose(compiled.logits, eager.logits, rtol=0, atol=1e-10), method
    assert counters["inductor"]["cudagraph_skips"] == skips


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("continuous", {"tile_len": 4}),
        ("epoched", {"epoch_len": 6}),
        ("deamortized", {}),
        ("naive", {}),
    ],
)
def test_traced_steps_after_eager_steps_continue_at_the_position(method, options):
    """Prefill, three eager steps (mid-tile, mid-epoch), then traced steps: the forward's
    outputs (float64) at every position."""
    torch.manual_seed(5)
    config = ConvLMConfig(d_model=8, n_layers=2, max_len=64, mixer="hyena", hyena_emb_dim=5)
    model = ConvLM(config).double().eval()
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(ids)
        with decoding(model, batch_size=2, max_len=40, method=method, **options) as session:
            got = [session.feed(ids[:, :5])]
            got += [session.feed(ids[:, t : t + 1]) for t in range(5, 8)]
            for t in range(8, 40):  # the traced path, uncompiled: tensor operations only
                got.append(session.feed_traced(traced_step(model), ids[:, t : t + 1], rows=[0, 1]))
    assert torch.allclose(torch.cat(got, dim=1), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_one_compilation_per_pattern_serves_every_length(method, device):
    """Lengths change the buffers (epoched: the epoch length itself), never a graph: the
    forward is compiled once, the scheduled work once per pattern (continuous: a level size
    that ends: 2^k tiles of 32 in 300 steps, 4 levels), whatever the
    length, the position or the session."""
    model = small_model("stu_tensordot").to(device)
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(2)).to(device)
    options = {"tile_len": 32} if method in ("continuous", "deamortized") else {}
    frames = counters["frames"]["total"]
    generate(model, ids, 300, method=method, compile=True, **options)
    assert counters["frames"]["total"] - frames <= 1 + (4 if method == "continuous" else 1)
    frames, graphs = counters["frames"]["total"], counters["stats"]["unique_graphs"]
    for new_tokens in (40, 300, 120):
        tokens = generate(model, ids, new_tokens, method=method, compile=True, **options)
        assert torch.equal(tokens, generate(model, ids, new_tokens, method=method, **options))
    assert counters["frames"]["total"] == frames
    assert counters["stats"]["unique_graphs"] == graphs


def test_every_step_has_its_own_recompile_limit():
    """Dynamo counts graphs against its recompile limit per code object: with one function for
    every step, the third (method, batch size) here would run eagerly under a limit of 2 (at
    the default 8, later tests in this file compared eager with eager)."""
    model = small_model("longconv")
    ids = torch.randint(0, 16, (2, 3), generator=torch.Generator().manual_seed(7))
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(recompile_limit=2):
        for method, batch in (("continuous", 1), ("continuous", 2), ("epoched", 2)):
            generate(model, ids[:batch], 3, method=method, compile=True)
    assert counters["stats"]["unique_graphs"] == graphs + 3


def test_compile_arguments_are_checked():
    model = small_model("hyena")
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="compile must be a bool"):
        generate(model, ids, 4, compile="yes")
    with decoding(model, batch_size=1, max_len=8) as session:
        with pytest.raises(ValueError, match=r"steps the started rows and only those: rows \[0\]"):
            session.feed_traced(traced_step(model), ids[:, :1], rows=[0])  # row 0 not started
        session.feed(ids)
        with pytest.raises(ValueError, match="a compiled step takes one position of every row"):
            session.feed_traced(traced_step(model), ids, rows=[0])
        assert session.positions.tolist() == [3]
    half = small_model("hyena").to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"needs a float32 or float64 model.*got bfloat16"):
        generate(half, ids, 4, compile=True)  # before any work
    with decoding(half, batch_size=1, max_len=8) as session:
        session.feed(ids)
        with pytest.raises(ValueError, match="no compiled step in bfloat16"):
            session.feed_traced(traced_step(half), ids[:, :1], rows=[0])


def test_cli_compile_prints_eager_text(capsys):
    from futurefill.cli import main

    argv = ["generate", "def ", "--max-new-tokens", "12", "--temperature", "0"]
    assert main(argv) == 0
    eager = capsys.readouterr().out
    assert main([*argv, "--compile"]) == 0
    captured = capsys.readouterr()
    assert captured.out == eager
    assert captured.err.startswith("futurefill generate: compiling the token step (once per")
    assert main([*argv, "--compile", "--method", "naive"]) == 0
    assert capsys.readouterr().out == eager


def test_bench_context_times_the_compiled_step(tmp_path):
    from futurefill.bench import model as model_bench

    config = model_bench.ContextConfig(
        prompt_lens=(16, 64),
        new_tokens=16,
        methods=("continuous", "compiled"),
        mixers=("hyena",),
        d_model=8,
        n_layers=1,
        vocab_size=16,
        repeats=1,
        warmup_len=4,
        threads=1,
        progress=False,
        out=tmp_path,
    )
    report = model_bench.run(config)
    assert not report["failures"]
    rows = {(r["method"], r["P"]): r for r in report["rows"]}
    assert all(r["status"] == "ok" and r["tokens_match"] for r in rows.values())


def test_batch_one_products_become_multiply_and_sum_on_cpu():
    """The CPU compiled step asks inductor to rewrite each (1, k) x (k, n) product (what bounds
    a batch-1 step: see generation.CPU_COMPILE_OPTIONS); the pass must have run."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # an earlier test's graph (same structure) would serve: compile anew
    model = small_model("hyenadna")
    ids = torch.randint(0, 16, (1, 3), generator=torch.Generator().manual_seed(7))
    before = counters["inductor"]["decompose_addmm"] + counters["inductor"]["decompose_mm"]
    with inductor_config.patch(force_disable_caches=True):  # the pass runs, not a cache hit
        compiled = generate(model, ids, 6, compile=True)
    after = counters["inductor"]["decompose_addmm"] + counters["inductor"]["decompose_mm"]
    assert after > before
    assert torch.equal(compiled, generate(model, ids, 6))


def test_compiled_deamortized_with_its_jobs_on_the_worker(monkeypatch):
    """Every FFT job queued (none small enough to run inline), cut into four-step slices: the
    compiled steps' tokens and logits are eager's (float64)."""
    monkeypatch.setattr(deamortized, "SMALL_JOB_POINTS", 0)
    monkeypatch.setattr(deamortized, "SLICE_POINTS", 16)
    torch.manual_seed(7)
    config = ConvLMConfig(d_model=8, n_layers=2, max_len=200, mixer="hyena", hyena_emb_dim=5)
    model = ConvLM(config).double().eval()
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(8))
    options = {"method": "deamortized", "tile_len": 2, "return_logits": True}
    eager = generate(model, ids, 120, **options)
    compiled = generate(model, ids, 120, compile=True, **options)
    assert torch.equal(compiled.tokens, eager.tokens)
    assert torch.allclose(compiled.logits, eager.logits, rtol=0, atol=1e-10)
