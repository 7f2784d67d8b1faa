"""``futurefill bench layer`` and ``bench prompt``: runs, writes valid files, records skips, fails
on wrong outputs."""

import pytest
import torch

from futurefill.bench import layer, timing
from futurefill.bench.layer import LAYER_METHODS

TINY = ("bench", "layer", "--lengths", "16", "32", "64", "--channels", "4", "--batch", "2")


def test_layer_runs_and_writes_json_csv_png(bench, out_dir):
    code = bench.run_cli(*TINY, "--repeats", "2", "--warmup-len", "8", "--out", str(out_dir))
    assert code == 0
    report = bench.read_json(out_dir / "layer.json")
    assert report["benchmark"] == "layer"
    assert report["machine"]["torch_threads"] == 1
    assert report["machine"]["load_average_1min_after"] >= 0  # and before: the run's load
    idle = report["machine"]["idle_step"]  # the machine's own step-latency floor
    assert idle["steps"] == 64 and 0 < idle["step_median_s"] <= idle["step_max_s"]
    assert report["command"].startswith("futurefill bench layer --lengths 16 32 64")
    rows = report["rows"]
    assert {(r["method"], r["L"]) for r in rows} == {
        (m, n) for m in LAYER_METHODS for n in (16, 32, 64)
    }
    for r in rows:
        assert r["status"] == "ok", r
        assert r["total_s"] > 0 and r["per_token_s"] == pytest.approx(r["total_s"] / r["L"])
        assert r["max_rel_err"] <= r["tol"] == 1e-4
        assert 1 <= r["repeats"] <= 2
        if r["method"] != "offline":
            assert r["peak_cache_bytes"] > 0
            assert [c[:2] for c in r["chunks"]] == [list(b) for b in timing.chunk_bounds(r["L"])]
        if r["method"] in layer.ONLINE_METHODS:  # every step timed: the latency distribution
            assert 0 < r["step_median_s"] <= r["step_p99_s"] <= r["step_p999_s"] <= r["step_max_s"]
            assert 0 <= r["step_max_at"] < r["L"]
            assert [a for a, _, _ in r["trace"]] == list(range(r["L"]))  # L <= 256 buckets
            top, mid = max(t for _, t, _ in r["trace"]), [m for _, _, m in r["trace"]]
            assert top == pytest.approx(r["step_max_s"]) and min(mid) > 0
    for m in LAYER_METHODS:
        assert report["slopes"][m]["points"] == 3
        assert isinstance(report["slopes"][m]["all"], float)
    assert {(r["numerator"], r["denominator"]) for r in report["ratios"]} >= {
        ("naive", "continuous"),
        ("naive", "epoched"),
    }

    csv_rows = bench.read_csv(out_dir / "layer.csv")
    assert len(csv_rows) == len(rows)
    assert {r["status"] for r in csv_rows} == {"ok"}
    assert all(float(r["total_s"]) > 0 for r in csv_rows)
    per_position = bench.read_csv(out_dir / "layer_per_position.csv")
    assert {r["method"] for r in per_position} == set(LAYER_METHODS)
    table = (out_dir / "layer_table.md").read_text()
    assert "| L " in table and "naive/continuous" in table and "slope" in table
    assert "median / p99.9 / max" in table
    for name in (
        "layer_total_time",
        "layer_time_per_token",
        "layer_cache_bytes",
        "layer_step_latency",
    ):
        bench.assert_png(out_dir / f"{name}.png")


def test_layer_skips_over_budget_and_records_it(bench, out_dir):
    code = bench.run_cli(
        *TINY, "--methods", "naive", "recompute", "--budget", "1e-9", "--out", str(out_dir)
    )
    assert code == 0
    rows = bench.read_json(out_dir / "layer.json")["rows"]
    for r in rows:
        if r["L"] == 16:
            assert r["status"] == "ok" and r["repeats"] == 1
        else:
            assert r["status"].startswith("skipped (projected ")
            assert r["status"].endswith("> budget 1e-09 s)")
            assert r["projected_s"] > 1e-9
    csv_status = [r["status"] for r in bench.read_csv(out_dir / "layer.csv")]
    assert sum(s.startswith("skipped (projected") for s in csv_status) == 4
    assert "skipped" in (out_dir / "layer_table.md").read_text()


def test_layer_agreement_check_fails_loudly_on_wrong_method(bench, out_dir, monkeypatch, capsys):
    # 1e-3 relative error, ten times the float32 tolerance: must be caught.
    monkeypatch.setitem(layer.STEPPERS, "continuous", bench.wrong("continuous", 1e-3))
    code = bench.run_cli(*TINY, "--methods", "naive", "continuous", "--out", str(out_dir))
    assert code == 1
    err = capsys.readouterr().err
    assert "AGREEMENT CHECK FAILED" in err and "continuous at L=16" in err
    report = bench.read_json(out_dir / "layer.json")
    status = {(r["method"], r["L"]): r["status"] for r in report["rows"]}
    assert status[("continuous", 16)].startswith("FAILED (max rel err 1.00e-03 > tol 1.0e-04)")
    assert status[("continuous", 32)] == "not run (failed at L=16)"
    assert status[("naive", 64)] == "ok"
    assert report["failures"]


def test_layer_agreement_tolerance_passes_rounding_sized_errors(bench, out_dir, monkeypatch):
    monkeypatch.setitem(layer.STEPPERS, "continuous", bench.wrong("continuous", 1e-6))
    code = bench.run_cli(*TINY, "--methods", "continuous", "--out", str(out_dir), "--no-plots")
    assert code == 0


def test_layer_run_api_float64():
    config = layer.LayerConfig(
        lengths=(8, 16), channels=2, dtype="float64", threads=1, repeats=1, progress=False
    )
    report = layer.run(config)
    assert report["tol"] == 1e-10
    assert report["max_rel_err"] < 1e-12
    assert all(r["status"] == "ok" for r in report["rows"])
    assert torch.get_num_threads() >= 1


def test_layer_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown methods"):
        layer.run(layer.LayerConfig(lengths=(8,), methods=("fast",), progress=False))


def test_layer_steps_after_a_prefill_and_the_compiled_layer_step(bench, out_dir):
    methods = ("naive", "continuous", "compiled-continuous", "offline")
    args = ("--lengths", "32", "64", "--steps", "16", "--warmup-len", "16", "--repeats", "1")
    code = bench.run_cli(*TINY[:2], *args, "--channels", "4", "--batch", "2", "--no-plots",
                         "--methods", *methods, "--out", str(out_dir))  # fmt: skip
    assert code == 0
    report = bench.read_json(out_dir / "layer.json")
    assert report["config"]["steps"] == 16
    assert report["machine"]["idle_step"]["steps"] == 16  # the idle floor: as many steps
    for r in report["rows"]:
        assert r["status"] == "ok" and r["max_rel_err"] <= 1e-4, r  # prefill and steps, checked
        if r["method"] == "offline":
            assert r["steps"] == r["L"] and "device_step_p50_s" not in r
            continue
        assert (r["steps"], r["prefilled"]) == (16, r["L"] - 16)
        assert r["per_token_s"] == pytest.approx(r["decode_s"] / 16)
        assert r["prefill_s"] > 0 and r["total_s"] == pytest.approx(r["prefill_s"] + r["decode_s"])
        assert r["chunks"][0][0] == r["L"] - 16  # the steps' chunks at absolute positions
        assert r["step_clock"] == "host"  # on CPU the device times are the host's
        assert r["device_step_p50_s"] == r["step_median_s"]
        assert r["device_step_p50_s"] <= r["device_step_p99_s"] <= r["device_step_p999_s"]
    table = (out_dir / "layer_table.md").read_text()
    assert "compiled-continuous p50 / p99 / p99.9" in table
    assert "--steps 16: at each L > 16 the first L - 16 inputs were prefilled" in table


def test_compiled_layer_steps_need_float32_or_float64(bench, out_dir, capsys):
    code = bench.run_cli(*TINY, "--methods", "compiled-naive", "--dtype", "bfloat16",
                         "--out", str(out_dir))  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--methods compiled-naive need --dtype float32 or float64" in err[0]


PROMPT_TINY = tuple(
    "bench prompt --prompt-lens 8 32 --gen-lens 16 64 --channels 4 --batch 2".split()
)


def test_prompt_runs_and_writes_json_csv_png(bench, out_dir):
    code = bench.run_cli(*PROMPT_TINY, "--repeats", "2", "--out", str(out_dir))
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
    code = bench.run_cli(
        *PROMPT_TINY, "--methods", "naive", "--budget", "1e-9", "--out", str(out_dir)
    )
    assert code == 0
    rows = bench.read_json(out_dir / "prompt.json")["rows"]
    assert rows[0]["status"] == "ok"
    assert all(r["status"].startswith("skipped (projected") for r in rows[1:])
    assert (
        sum(r["status"].startswith("skipped") for r in bench.read_csv(out_dir / "prompt.csv")) == 3
    )


def test_prompt_agreement_check_fails_loudly_on_wrong_method(bench, out_dir, monkeypatch, capsys):
    monkeypatch.setitem(layer.STEPPERS, "epoched", bench.wrong("epoched", 1e-3))
    code = bench.run_cli(*PROMPT_TINY, "--out", str(out_dir), "--no-plots")
    assert code == 1
    assert "AGREEMENT CHECK FAILED" in capsys.readouterr().err
    status = {
        (r["method"], r["P"], r["K"]): r["status"]
        for r in bench.read_json(out_dir / "prompt.json")["rows"]
    }
    assert status[("epoched", 8, 16)].startswith("FAILED")
    assert status[("epoched", 32, 64)].startswith("not run")
    assert status[("continuous", 32, 64)] == "ok"
