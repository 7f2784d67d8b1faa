"""``futurefill bench prompt``: runs, writes valid files, records skips, fails on wrong outputs."""

from futurefill.bench import layer

TINY = (
    "bench",
    "prompt",
    "--prompt-lens",
    "8",
    "32",
    "--gen-lens",
    "16",
    "64",
    "--channels",
    "4",
    "--batch",
    "2",
)


def test_prompt_runs_and_writes_json_csv_png(bench, out_dir):
    code = bench.run_cli(*TINY, "--repeats", "2", "--out", str(out_dir))
    assert code == 0
    report = bench.read_json(out_dir / "prompt.json")
    rows = report["rows"]
    assert len(rows) == len(layer.ONLINE_METHODS) * 4  # every online method x 2 P x 2 K
    for r in rows:
        assert r["status"] == "ok", r
        assert r["prefill_s"] > 0 and r["decode_s"] > 0
        assert r["peak_cache_bytes"] >= r["cache_bytes_after_prefill"] > 0
        assert r["max_rel_err"] <= r["tol"]
    # Continuous keeps O(K) after the prompt: the same bytes for every P at a given K.
    cont = {
        (r["P"], r["K"]): r["cache_bytes_after_prefill"]
        for r in rows
        if r["method"] == "continuous"
    }
    assert cont[(8, 64)] == cont[(32, 64)]
    assert {r["numerator"] for r in report["ratios"]} == {"naive"}
    csv_rows = bench.read_csv(out_dir / "prompt.csv")
    assert len(csv_rows) == len(rows)
    assert all(float(r["decode_s"]) > 0 for r in csv_rows)
    assert "Decode time" in (out_dir / "prompt_table.md").read_text()
    for name in ("prompt_decode_time", "prompt_prefill_time", "prompt_cache_bytes"):
        bench.assert_png(out_dir / f"{name}.png")


def test_prompt_skips_over_budget_and_records_it(bench, out_dir):
    code = bench.run_cli(*TINY, "--methods", "naive", "--budget", "1e-9", "--out", str(out_dir))
    assert code == 0
    rows = bench.read_json(out_dir / "prompt.json")["rows"]
    assert rows[0]["status"] == "ok"
    assert all(r["status"].startswith("skipped (projected") for r in rows[1:])
    assert (
        sum(r["status"].startswith("skipped") for r in bench.read_csv(out_dir / "prompt.csv")) == 3
    )


def test_prompt_agreement_check_fails_loudly_on_wrong_method(bench, out_dir, monkeypatch, capsys):
    monkeypatch.setitem(layer.STEPPERS, "epoched", bench.wrong("epoched", 1e-3))
    code = bench.run_cli(*TINY, "--out", str(out_dir), "--no-plots")
    assert code == 1
    assert "AGREEMENT CHECK FAILED" in capsys.readouterr().err
    status = {
        (r["method"], r["P"], r["K"]): r["status"]
        for r in bench.read_json(out_dir / "prompt.json")["rows"]
    }
    assert status[("epoched", 8, 16)].startswith("FAILED")
    assert status[("epoched", 32, 64)].startswith("not run")
    assert status[("continuous", 32, 64)] == "ok"
