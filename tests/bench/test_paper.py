"""``futurefill bench paper``: the paper's experiment at tiny sizes (eager: no compile), its
projection from a prefix, the token comparison, and its option errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from futurefill.bench import paper
from futurefill.cli import main

TINY = [
    "bench", "paper", "--layers", "1", "--width", "16", "--vocab", "64", "--mlp-ratio", "2",
    "--tokens", "48", "--prefix", "16", "--modes", "eager", "--threads", "1",
]  # fmt: skip


def test_paper_runs_every_method_and_writes_its_report(tmp_path, capsys):
    assert main([*TINY, "--dtypes", "float32", "bfloat16", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "paper.json").read_text())
    assert report["paper"]["epoched_s"] == 52.22 and report["paper"]["naive_s"] == 111.92
    assert report["paper_shape"] is False and report["parameters"] > 0
    runs = {r["run"]: r for r in report["rows"]}
    assert list(runs) == [  # the one planned run of the default --full first, then eager ones
        "naive-eager-float32",
        "epoched-eager-float32",
        "continuous-eager-float32",
        "naive-eager-bfloat16",
        "epoched-eager-bfloat16",
        "continuous-eager-bfloat16",
    ]
    for name, r in runs.items():
        assert r["status"] == "ok", r
        full = name == "naive-eager-float32"
        assert r["tokens_measured"] == (48 if full else 16)
        assert r["projected_from"] == (None if full else 16)
        assert r["seconds"] >= r["seconds_measured"] > 0
        assert r["tokens_per_s"] == pytest.approx(48 / r["seconds"], rel=1e-4)
        assert r["warmup_s"] > 0 and r["recompiled_first"] is False
    assert runs["epoched-eager-float32"]["compared_with"] == "naive-eager-float32"
    assert runs["epoched-eager-bfloat16"]["compared_with"] == "naive-eager-bfloat16"
    float32 = [r for r in runs.values() if r["dtype"] == "float32"]
    assert all(r["tokens_equal"] for r in float32)  # exact methods: the same greedy tokens
    assert report["ratios"] == {"continuous_compiled_float32_s": None}  # no compiled run
    with open(tmp_path / "paper.csv", newline="") as file:
        assert [row["run"] for row in csv.DictReader(file)] == list(runs)
    table = (tmp_path / "paper.md").read_text()
    assert "| epoched-eager-float32 |" in table and "projected from 16" in table
    assert "Epoched-FutureFill 52.22 s, naive 111.92 s" in table
    assert table in capsys.readouterr().out


def test_a_run_past_its_budget_stops_and_is_projected(tmp_path):
    args = ["--dtypes", "float32", "--methods", "naive", "--budget", "1e-9"]
    assert main([*TINY, *args, "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "paper.json").read_text())["rows"]
    assert row["tokens_measured"] == 16 and row["projected_from"] == 16  # after the first chunk
    assert row["seconds"] > row["seconds_measured"]


def test_runs_past_the_time_limit_are_not_run(tmp_path):
    args = ["--dtypes", "float32", "--time-limit", "1e-9"]
    assert main([*TINY, *args, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "paper.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["not run (time limit)"] * 3


def test_project_integrates_the_line_fitted_to_the_step_times():
    # A step at position t takes 1 + t/100 s; chunks of positions [0, 16), [16, 32), [32, 64).
    chunks = [
        (a, b, sum(1 + t / 100 for t in range(a, b))) for a, b in ((0, 16), (16, 32), (32, 64))
    ]
    exact = sum(1 + t / 100 for t in range(256))
    assert paper.project(chunks, 256) == pytest.approx(exact, rel=1e-9)
    assert paper.project(chunks, 64) == pytest.approx(sum(s for _, _, s in chunks))
    falling = [(0, 16, 32.0), (16, 32, 32.0), (32, 64, 32.0)]  # 2 s a step, then 1: flat at 1
    assert paper.project(falling, 128) == pytest.approx(96.0 + 64.0)


def test_differing_tokens_give_the_first_difference_and_the_margin_there():
    torch.manual_seed(0)
    model = paper.ConvLM(paper.paper_config(1, 16, 64, 2, 32)).eval()
    prompt = torch.tensor([[3]])
    tokens = torch.arange(10)
    reference = {"run": "a", "_tokens": tokens}
    row = {"_tokens": torch.cat([tokens[:4], torch.tensor([60]), tokens[5:8]])}
    paper.compare_tokens(row, reference, model, prompt)
    assert row["tokens_equal"] is False and row["compared"] == 8 and row["compared_with"] == "a"
    assert row["first_diff"] == 4 and row["tokens_at_diff"] == [60, 4]
    with torch.no_grad():
        logits = model(torch.cat([prompt[0], tokens[:4]])[None])[0, -1]
    top = logits.topk(2).values
    assert row["logit_margin"] == pytest.approx(float(top[0] - top[1]), rel=1e-4, abs=1e-6)
    assert row["logit_margin_rel"] == pytest.approx(row["logit_margin"] / float(logits.abs().max()))
    same = {"_tokens": tokens[:6]}
    paper.compare_tokens(same, reference, model, prompt)
    assert same["tokens_equal"] is True and same["compared"] == 6 and "first_diff" not in same


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--full", "naive-eager-float64"], "--full: naive-eager-float64 not among the runs"),
        (["--modes", "compiled", "--dtypes", "bfloat16"], "--modes compiled needs --dtypes"),
        (["--tokens", "0"], "argument --tokens: must be an integer >= 1"),
        (["--budget", "-1"], "argument --budget"),
        (["--methods", "fast"], "argument --methods: invalid choice"),
    ],
)
def test_bad_options_are_one_line(extra, message, tmp_path, capsys):
    assert main([*TINY, "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "paper.json").exists()
