"""``futurefill bench fork``: a tiny run writes its files, fork's samples equal repeated's, and a
fork whose samples differ fails loudly."""

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
