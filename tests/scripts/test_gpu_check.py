"""scripts/gpu_check.py: its CPU dry run (the same code at tiny sizes), and its summary."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what runs without CUDA")
def test_dry_run_says_so_in_one_line_and_checks_its_parts(tmp_path):
    parts = ["sync", "layer", "paper", "serve", "serve-hyenadna"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--only", *parts],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "gpu-check: no CUDA device here: dry run of the check on the CPU at tiny sizes"
    )
    assert [line.split(":")[1].strip() for line in lines[1:-1]] == parts
    assert lines[-1] == f"gpu-check: ok; results in {tmp_path}"
    assert json.loads((tmp_path / "sync.json").read_text())["deamortized"].startswith("no host")
    summary = (tmp_path / "summary.md").read_text()

    layer = json.loads((tmp_path / "layer" / "layer.json").read_text())
    ok = {(r["method"], r["L"]) for r in layer["rows"] if r["status"] == "ok"}
    assert ok == {(m, n) for m in layer["config"]["methods"] for n in (128, 512)}  # no skips
    for r in layer["rows"]:
        if r["method"] != "offline":  # the last 128 steps after a prefill of the rest
            assert (r["steps"], r["prefilled"]) == (128, r["L"] - 128)
            assert r["step_clock"] == "host"  # no CUDA: the device figures are host times
            assert 0 < r["device_step_p50_s"] <= r["device_step_p99_s"] <= r["device_step_p999_s"]
    assert "| compiled-continuous | 512 |" in summary
    assert "| bench layer: every method has a figure at L = 512 | all | met |" in summary

    paper = json.loads((tmp_path / "paper" / "paper.json").read_text())
    runs = {r["run"]: r for r in paper["rows"]}
    assert set(runs) == {
        f"{m}-{mode}-{dtype}"
        for m in ("naive", "continuous")
        for mode, dtype in (("eager", "float32"), ("compiled", "float32"), ("eager", "bfloat16"))
    }
    for r in runs.values():
        assert r["status"] == "ok" and r["tokens_equal"] is True, r
        assert r["seconds"] > 0 and r["tokens_per_s"] > 0
    assert runs["continuous-compiled-float32"]["projected_from"] is None  # all 64 tokens
    assert runs["continuous-eager-float32"]["projected_from"] == 32
    assert runs["naive-eager-float32"]["compared_with"] == "continuous-compiled-float32"
    assert (tmp_path / "paper" / "paper.md").read_text().startswith("## The paper's experiment")
    assert "| bench paper: continuous compiled float32 <= 15 s |" in summary
    assert "| continuous-compiled-float32 |" in summary  # bench paper's own table

    for name, shape in (("serve", "bundled"), ("serve-hyenadna", "hyenadna")):
        serve = json.loads((tmp_path / name / "serve.json").read_text())
        assert serve["config"]["shape"] == shape and serve["failures"] == []  # tokens equal
        assert [r["mode"] for r in serve["rows"]] == ["continuous", "static", "sequential"]
        for r in serve["rows"]:
            assert 0 < r["ttft_median_s"] <= r["ttft_p99_s"]
            assert 0 < r["itl_median_s"] <= r["itl_p99_s"]
        assert set(serve["ratios"][0]) == {
            "rate",
            "continuous_over_static",
            "continuous_over_sequential",
            "itl_p99_over_p50",
        }
        assert f"| serve {shape} at 50 req/s: continuous >= 4x one at a time" in summary


def test_a_failing_part_fails_the_check(tmp_path, monkeypatch):
    check = load_script()
    result = check.run_part("broken", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path, 60)
    assert result["status"] == 3
    assert "| broken | 3 |" in check.summarize(tmp_path, [result])


def test_targets_are_judged_from_the_reports(tmp_path):
    check = load_script()
    (tmp_path / "serve").mkdir()
    rows = [
        {"rate": 200.0, "mode": mode, "tokens_per_s": tps, "ttft_median_s": 0.01,
         "ttft_p99_s": 0.02, "itl_median_s": 0.001, "itl_p99_s": itl}
        for mode, tps, itl in (("continuous", 900.0, 0.0035), ("static", 500.0, 0.001),
                               ("sequential", 200.0, 0.001))
    ]  # fmt: skip
    serve = {
        "config": {"shape": "bundled", "requests": 32, "slots": 8},
        "rows": rows,
        "ratios": [
            {
                "rate": 200.0,
                "continuous_over_static": 1.8,
                "continuous_over_sequential": 4.5,
                "itl_p99_over_p50": 3.5,
            }
        ],
        "failures": [],
    }
    (tmp_path / "serve" / "serve.json").write_text(json.dumps(serve))
    summary = check.summarize(tmp_path, [])
    assert "at 200 req/s: continuous >= 4x one at a time in tokens/s | 4.50x | met |" in summary
    assert "continuous >= 1.5x static batching in tokens/s | 1.80x | met |" in summary
    assert "continuous p99 inter-token latency <= 3x its p50 | 3.50x | MISSED |" in summary
    assert "| 200 | continuous | 900 | 10.0 / 20.0 | 1.00 / 3.50 |" in summary


def test_the_gpu_targets_of_the_compiled_step_and_hyenadna_are_judged_on_a_gpu_only():
    check = load_script()
    compiled = {"device": "cuda", "rows": [{"method": "continuous", "compiled_per_token_us": 87.5}]}
    assert check.compiled_targets(compiled)[0][1:] == ("87.5", True)
    assert check.compiled_targets(compiled | {"device": "cpu"})[0][2] is None
    rows = [
        {"method": "compiled", "P": 2**14, "tokens_per_s": 5200.0},
        {"method": "compiled", "P": 2**20, "tokens_per_s": 3900.0},
        {"method": "naive", "P": 2**20, "tokens_per_s": 100.0},
    ]
    rate, flat = check.hyenadna_targets({"machine": {"gpu": "NVIDIA H100"}, "rows": rows})
    assert rate[1:] == ("3900", False)  # >= 4000 tokens/s after 2^20: missed
    assert flat[1:] == ("1.33x", False)  # 5200 / 3900, over 1.3x
    assert check.hyenadna_targets({"machine": {}, "rows": rows})[0][2] is None


def test_cuda_cases_are_collected_everywhere():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--co",
            "-o",
            "addopts=--import-mode=importlib",
            "-m",
            "cuda",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "online" / "test_traced.py"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert "test_feedback_loop_through_traced_steps[cuda]" in result.stdout
