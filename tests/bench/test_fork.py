"""``futurefill bench fork``: a tiny run writes its files, fork's samples equal repeated's, a
fork whose samples differ fails loudly, and the server way drives ``futurefill serve`` (a cold
request, then a prefix-cache hit with the same tokens, then N samples)."""

from __future__ import annotations

import pytest

from futurefill.bench import fork as fork_bench

TINY = tuple(
    "bench fork --prompt-lens 24 48 --new-tokens 6 --samples 3 --d-model 8 --n-layers 2 "
    "--warmup-len 4".split()
)


def test_fork_runs_and_writes_json_csv_table(bench, out_dir):
    assert bench.run_cli(*TINY, "--repeats", "2", "--out", str(out_dir)) == 0
    report = bench.read_json(out_dir / "fork.json")
    rows = report["rows"]
    assert [(r["P"], r["method"]) for r in rows] == [
        (p, m) for p in (24, 48) for m in fork_bench.WAYS
    ]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["K"] == 6 and r["samples"] == 3 and r["engine"] == "continuous"
        assert r["max_rel_err"] <= r["tol"]
        assert 0 < r["prefill_s"] < r["total_s"] and 0 < r["decode_s"] < r["total_s"]
        assert r["prefill_s"] + r["decode_s"] == pytest.approx(r["total_s"])
        assert r["tokens_per_s"] == pytest.approx(3 * 6 / r["total_s"])
    # One generator seed and one batch layout: fork's samples are repeated's, token for token.
    for r in rows:
        if r["method"] != "separate":
            assert r["tokens_match"] is True and r["samples_matching"] == 3
    machine = report["machine"]
    assert machine["torch_threads"] == 1 and "load_average_1min_after" in machine
    ratios = {(r["numerator"], r["denominator"]): r for r in report["ratios"]}
    assert set(ratios) == {("separate", "fork"), ("repeated", "fork")}
    assert ratios[("separate", "fork")]["P"] == 48
    csv_rows = bench.read_csv(out_dir / "fork.csv")
    assert len(csv_rows) == len(rows) and all(float(r["total_s"]) > 0 for r in csv_rows)
    table = (out_dir / "fork_table.md").read_text()
    assert "separate/fork wall time at the largest size" in table
    assert "identical to repeated's, sample by sample" in table
    assert report["command"].startswith("futurefill bench fork --prompt-lens 24 48")


def test_samples_that_differ_fail_the_run(bench, out_dir, monkeypatch, capsys):
    generate = fork_bench.generate

    def off_by_one_token(model, ids, new_tokens, **options):
        out = generate(model, ids, new_tokens, **options)
        if options["num_return_sequences"] > 1:  # the fork way only
            out.tokens[-1, -1] = (out.tokens[-1, -1] + 1) % 16
        return out

    monkeypatch.setattr(fork_bench, "generate", off_by_one_token)
    argv = (*TINY[:3], "24", *TINY[5:], "--methods", "fork", "repeated", "--repeats", "1")
    assert bench.run_cli(*argv, "--out", str(out_dir)) == 1
    assert "AGREEMENT CHECK FAILED" in capsys.readouterr().err
    rows = {r["method"]: r for r in bench.read_json(out_dir / "fork.json")["rows"]}
    assert rows["fork"]["status"].startswith("FAILED (sample 2's tokens differ")
    assert rows["repeated"]["status"] == "ok"
    assert rows["fork"]["samples_matching"] == 2


def test_a_vocabulary_too_small_for_dna_is_refused(bench, out_dir, capsys):
    assert bench.run_cli(*TINY, "--vocab-size", "8", "--out", str(out_dir)) == 2
    assert "--vocab-size 8 must hold the DNA tokenizer's 12" in capsys.readouterr().err


def test_server_way_serves_cold_then_a_prefix_cache_hit(bench, out_dir):
    argv = (*TINY[:3], "24", *TINY[5:], "--methods", "fork", "server", "--repeats", "2")
    assert bench.run_cli(*argv, "--out", str(out_dir)) == 0
    report = bench.read_json(out_dir / "fork.json")
    rows = {r["method"]: r for r in report["rows"]}
    assert set(rows) == {"fork", "server"}
    served = rows["server"]
    assert served["status"] == "ok", served
    assert served["max_rel_err"] <= served["tol"]  # greedy log-probabilities against float64
    assert served["repeats"] == 2 and served["ttft_tokens"] == 6  # min(8, K)
    # Greedy (temperature 0): the hit gives the cold request's tokens, in every run.
    assert served["hit_tokens_match"] is True
    assert served["hit_logprob_max_diff"] <= 1e-6
    # The warm-up's miss and hit, then per run one miss (cold) and two hits (again, n=3).
    assert served["prefix_cache_lookups"] == {"miss": 1 + 2, "hit": 1 + 2 * 2}
    assert served["prefix_cache_bytes"] > 0
    assert len(served["cold_ttft_times_s"]) == len(served["hit_ttft_times_s"]) == 2
    assert served["cold_ttft_s"] > 0 and served["hit_ttft_s"] > 0 and served["ttft_ratio"] > 0
    assert 0 < served["prefill_s"] < served["total_s"]
    assert served["tokens_per_s"] == pytest.approx(3 * 6 / served["total_s"])
    assert served["server_exit_code"] == 0  # stopped by SIGTERM, gracefully
    assert "--slots 3" in served["server_options"]
    csv_rows = {r["method"]: r for r in bench.read_csv(out_dir / "fork.csv")}
    assert float(csv_rows["server"]["cold_ttft_s"]) > 0 and csv_rows["fork"]["cold_ttft_s"] == ""
    assert csv_rows["server"]["hit_tokens_match"] == "True"
    table = (out_dir / "fork_table.md").read_text()
    assert "the same request again (a prefix-cache hit)" in table
    assert "identical to the cold request's in every run" in table


def test_the_server_way_needs_a_slot_per_sample(bench, out_dir, capsys):
    argv = (*TINY, "--methods", "server", "--samples", "1025")
    assert bench.run_cli(*argv, "--out", str(out_dir)) == 2
    assert "--methods server: --samples 1025 > 1024 slots" in capsys.readouterr().err
