"""futurefill bench serve: a tiny workload served every way (the bundled model, and the HyenaDNA
shape), its files and ratios, the token check across modes, and its option errors."""

from __future__ import annotations

import json

import pytest

from futurefill.cli import main

TINY = [
    "bench", "serve", "--requests", "6", "--rates", "20", "--prompt-lens", "4", "40",
    "--output-lens", "2", "12", "--slots", "3", "--clients", "4",
]  # fmt: skip


def test_serve_runs_every_mode_and_writes_its_report(tmp_path, capsys):
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "serve.json").read_text())
    assert [row["mode"] for row in report["rows"]] == ["continuous", "static", "sequential"]
    assert report["failures"] == []  # every mode's tokens are the request's alone
    for row in report["rows"]:
        assert row["tokens"] > 0 and row["tokens_per_s"] > 0
        assert 0 <= row["itl_median_s"] <= row["itl_p99_s"]
    for name in ("serve.csv", "serve_table.md", "serve_throughput.png", "serve_latency.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| 20 | continuous |" in capsys.readouterr().out
    (ratios,) = report["ratios"]
    by_mode = {row["mode"]: row for row in report["rows"]}
    for mode in ("static", "sequential"):
        expected = by_mode["continuous"]["tokens_per_s"] / by_mode[mode]["tokens_per_s"]
        assert ratios[f"continuous_over_{mode}"] == pytest.approx(expected)
    itl = by_mode["continuous"]["itl_p99_s"] / by_mode["continuous"]["itl_median_s"]
    assert ratios["itl_p99_over_p50"] == pytest.approx(itl)
    assert "- load 20: continuous tokens/s " in (tmp_path / "serve_table.md").read_text()


def test_serve_hyenadna_shape_gives_every_mode_the_same_tokens(tmp_path):
    assert main([*TINY, "--shape", "hyenadna", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "serve.json").read_text())
    assert report["config"]["shape"] == "hyenadna" and report["failures"] == []
    assert all(row["tokens"] > 0 for row in report["rows"])


def test_compiled_serving_gives_every_mode_the_same_tokens(tmp_path):
    """--compile: the scheduler's compiled step over every slot (rows admitted and released
    between its graphs) and compiled generate() give each request its tokens alone."""
    options = ["--compile", "--modes", "continuous", "sequential", "--threads", "1"]
    assert main([*TINY, *options, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "serve.json").read_text())
    assert report["config"]["compile"] is True and report["failures"] == []
    assert all(row["tokens"] > 0 for row in report["rows"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt-lens", "50", "10"], "--prompt-lens: MIN 50 is above MAX 10"),
        (["--output-lens", "1", "5000"], "exceed the model's max_len 2048"),
        (["--rates", "0"], "argument --rates"),
        (["--shape", "hyenadna", "--http"], "--http: futurefill serve runs the bundled model"),
        (["--compile", "--http"], "--http: futurefill serve runs the bundled model"),
        (["--shape", "dna"], "argument --shape: invalid choice"),
    ],
)
def test_bad_options_are_one_line(extra, message, tmp_path, capsys):
    assert main([*TINY, "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
