"""The ``futurefill bench`` command line: presets, option resolution, ``all``."""

import csv
import json
import shlex

import pytest

from futurefill import cli as top_cli
from futurefill.bench import common
from futurefill.bench.presets import BENCHMARKS, PRESETS
from futurefill.cli import bench as cli
from futurefill.cli.options import UsageError


def run_cli(*args: str) -> int:
    """``futurefill ...`` in this process; always one thread, no progress bar."""
    return top_cli.main([*args, "--threads", "1", "--no-progress"])


@pytest.fixture
def out_dir(tmp_path):
    return tmp_path / "results"


def test_bench_registered_in_futurefill_cli():
    assert "futurefill.cli.bench" in top_cli.SUBCOMMAND_MODULES
    args = top_cli.build_parser().parse_args(["bench", "layer", "--preset", "quick"])
    assert args.bench == "layer"


def test_options_override_preset_which_overrides_defaults():
    parser = top_cli.build_parser()
    args = parser.parse_args(["bench", "layer", "--preset", "full", "--budget", "5"])
    config = cli.resolve_config("layer", args)
    assert config.lengths[-1] == 2**18  # the full preset reaches L = 2^18
    assert config.budget == 5.0  # the option beats the preset
    assert config.channels == 128 and config.batch == 1 and config.dtype == "float32"
    args = parser.parse_args(["bench", "layer", "--min-log2", "4", "--max-log2", "6"])
    assert cli.resolve_config("layer", args).lengths == (16, 32, 64)


@pytest.mark.parametrize("name", ["layer", "prompt", "model", "context", "fork"])
def test_equivalent_command_reproduces_config(name):
    parser = top_cli.build_parser()
    config = cli.resolve_config(name, parser.parse_args(["bench", name, "--preset", "quick"]))
    command = cli.equivalent_command(name, config)
    again = cli.resolve_config(name, parser.parse_args(shlex.split(command)[1:]))
    assert again == config


def test_context_options_and_full_preset():
    parser = top_cli.build_parser()
    for flag in ("--prompt-lens", "--prompt-len", "--contexts"):
        args = parser.parse_args(["bench", "context", flag, "64", "128", "--new-tokens", "16"])
        config = cli.resolve_config("context", args)
        assert config.prompt_lens == (64, 128) and config.new_tokens == 16
    assert "recompute" not in config.methods  # O(P) per step: left out by default
    args = parser.parse_args(["bench", "context", "--preset", "full"])
    full = cli.resolve_config("context", args)
    assert full.prompt_lens == (2**10, 2**12, 2**14, 2**15) and full.new_tokens == 256
    assert (full.mixers, full.d_model, full.n_layers) == (("stu_tensordot",), 128, 4)


def test_lengths_and_log2_range_exclusive():
    args = top_cli.build_parser().parse_args(
        ["bench", "layer", "--lengths", "8", "--min-log2", "3", "--max-log2", "4"]
    )
    with pytest.raises(UsageError, match="either --lengths or --min-log2"):
        cli.resolve_config("layer", args)


def test_bench_all_writes_every_benchmark(out_dir, monkeypatch):
    tiny = {
        "layer": {"lengths": (16, 32), "channels": 4, "repeats": 1, "warmup_len": 8},
        "prompt": {"prompt_lens": (8,), "gen_lens": (16,), "channels": 4, "repeats": 1},
        "model": {
            "lengths": (8, 16),
            "mixers": ("longconv",),
            "d_model": 8,
            "n_layers": 1,
            "vocab_size": 16,
            "repeats": 1,
            "warmup_len": 4,
        },
        "context": {
            "prompt_lens": (8,),
            "new_tokens": 4,
            "mixers": ("longconv",),
            "d_model": 8,
            "n_layers": 1,
            "vocab_size": 16,
            "repeats": 1,
            "warmup_len": 4,
        },
        "fork": {
            "prompt_lens": (8,),
            "new_tokens": 4,
            "samples": 2,
            "d_model": 8,
            "n_layers": 1,
            "repeats": 1,
            "warmup_len": 4,
        },
    }
    monkeypatch.setitem(PRESETS, "tiny", tiny)
    code = run_cli("bench", "all", "--preset", "tiny", "--out", str(out_dir))
    assert code == 0
    for name in BENCHMARKS:
        assert json.loads((out_dir / f"{name}.json").read_text())["benchmark"] == name
        with open(out_dir / f"{name}.csv", newline="") as file:
            assert list(csv.DictReader(file))
        assert (out_dir / f"{name}_table.md").exists()
    pngs = sorted(out_dir.glob("*.png"))
    assert len(pngs) == 14
    assert all(png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in pngs)


def test_compile_adds_the_compiled_method():
    from futurefill.cli import build_parser
    from futurefill.cli.bench import resolve_config

    args = build_parser().parse_args(["bench", "context", "--compile", "--no-progress"])
    assert resolve_config("context", args).methods == ("naive", "epoched", "continuous", "compiled")
    args = build_parser().parse_args(
        ["bench", "model", "--methods", "naive", "compiled", "--compile"]
    )
    assert resolve_config("model", args).methods == ("naive", "compiled")


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_config_field_is_an_option(name):
    import dataclasses

    parser = top_cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["bench"]
    bench_parser = next(a for a in sub._actions if a.dest == "bench_command").choices[name]
    dests = {a.dest for a in bench_parser._actions}
    assert {f.name for f in dataclasses.fields(BENCHMARKS[name].config)} <= dests


def test_a_report_file_that_is_a_directory_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "layer.csv").mkdir()
    argv = ["bench", "layer", "--lengths", "16", "--channels", "2", "--out", str(tmp_path)]
    assert top_cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "layer.csv exists and is not a file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layer.csv"]


def test_a_failed_write_leaves_the_output_directory_as_it_was(out_dir, monkeypatch):
    out_dir.mkdir()
    (out_dir / "layer.json").write_text("earlier run\n")
    written = []

    def full_disk(path, rows, columns):
        written.append(path)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(common, "write_csv", full_disk)
    assert run_cli("bench", "layer", "--lengths", "16", "--out", str(out_dir)) == 1
    assert written and sorted(p.name for p in out_dir.iterdir()) == ["layer.json"]
    assert (out_dir / "layer.json").read_text() == "earlier run\n"


@pytest.mark.parametrize("out", ["", " "])
def test_an_empty_output_directory_is_refused(out, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty --out once wrote here, silently
    assert top_cli.main(["bench", "layer", "--lengths", "16", "--out", out]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "--out" in err and "empty string" in err
    assert list(tmp_path.iterdir()) == []
