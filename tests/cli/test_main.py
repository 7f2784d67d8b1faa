"""The ``futurefill`` command line: every bad option ends before any work with one line on stderr,
nothing on stdout and exit status 2; a broken pipe ends quietly; every option has help."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import pytest

from futurefill.cli import build_parser, main, options

BAD = [
    # (arguments, what the one line must say)
    ("bench layer --lengths 0", "argument --lengths: must be a length >= 1, got 0"),
    ("bench layer --lengths -8", "argument --lengths: must be a length >= 1, got -8"),
    ("bench layer --lengths 100000000000", "needs about .* more than this machine's"),
    ("bench layer --lengths 1e3", "argument --lengths: must be a length >= 1, got '1e3'"),
    ("bench layer --channels 0", "argument --channels: must be a size in"),
    ("bench layer --batch -1", "argument --batch: must be a size in"),
    ("bench layer --repeats 0", "argument --repeats: must be an integer >= 1, got 0"),
    ("bench layer --budget -1", r"argument --budget: must be a finite number in \(0, inf\)"),
    ("bench layer --budget nan", r"argument --budget: must be a finite number"),
    ("bench layer --tol 0", r"argument --tol: must be a finite number in \(0, inf\)"),
    ("bench layer --methods foo", "argument --methods: invalid choice: 'foo'"),
    ("bench layer --min-log2 3", "--min-log2 and --max-log2 go together"),
    ("bench layer --min-log2 5 --max-log2 3", "--min-log2 5 is above --max-log2 3"),
    ("bench layer --seed -1", "argument --seed: must be a seed in"),
    ("bench model --mixers foo", "argument --mixers: invalid choice: 'foo'"),
    ("bench model --methods offline", "argument --methods: invalid choice: 'offline'"),
    ("bench model --d-model 0", "argument --d-model: must be a size in"),
    ("bench model --lengths 1000000000", "needs about .* more than this machine's"),
    ("bench layer --threads 0", "argument --threads: must be a thread count in"),
    ("bench layer --threads 1000", "argument --threads: must be a thread count in"),
    ("bench prompt --prompt-lens 0", "argument --prompt-lens: must be a length >= 1"),
    ("bench prompt --gen-lens 0", "argument --gen-lens: must be a length >= 1"),
    ("bench context --prompt-lens 0", "argument --prompt-lens/--prompt-len/--contexts"),
    ("bench context --new-tokens 0", "argument --new-tokens: must be a length >= 1"),
    ("bench context --vocab-size 0", "argument --vocab-size: must be a size in"),
    ("bench layer --out /etc/passwd", "argument --out: /etc/passwd exists and is not a directory"),
    ("bench layer --out /proc/nonexistent/x", "argument --out: .* cannot write there"),
    ("bench layer --out /etc/passwd/x", "argument --out: .* cannot write there"),
    ("bench layer --device tpu", "argument --device: must be cpu, cuda or cuda:N, got 'tpu'"),
    ("bench model --methods compiled --dtype bfloat16", "need --dtype float32 or float64"),
    ("bench context --compile --dtype float16", "compiled need --dtype float32 or float64"),
    ("bench all --skip foo", "argument --skip: invalid choice: 'foo'"),
    ("bench all --threads 0", "argument --threads: must be a thread count in"),
    ("generate hi --top-k 0", "argument --top-k: must be an integer >= 1, got 0"),
    ("generate hi --top-p 1.5", r"argument --top-p: must be a finite number in \(0, 1\]"),
    ("generate hi --top-p 0", r"argument --top-p: must be a finite number in \(0, 1\]"),
    ("generate hi --temperature nan", "argument --temperature: must be a finite number"),
    ("generate hi --temperature inf", "argument --temperature: must be a finite number"),
    ("generate hi --temperature -1", "argument --temperature: must be a finite number"),
    ("generate hi --temperature 0 --top-k 5", "--top-k shape sampling: add --do-sample"),
    ("generate hi --top-p 0.5", "--top-p shape sampling: add --do-sample"),
    ("generate hi --do-sample --temperature 0", "--do-sample needs a temperature > 0"),
    ("generate hi --bogus", "futurefill generate: error: unrecognized arguments: --bogus"),
    ("serve --slots 0", r"futurefill serve: error: argument --slots: must be an integer in \[1"),
    ("serve --model /no/such/dir", "argument --model: checkpoint directory not found"),
    ("serve --method fast", "argument --method: invalid choice"),
    ("serve --prefix-cache-bytes -1", "argument --prefix-cache-bytes: must be a size in bytes"),
    ("serve --prefix-cache-bytes 1X", "argument --prefix-cache-bytes: must be a size in bytes"),
    ("bench serve --method fast", "argument --method: invalid choice"),
    ("bench serve --requests 0", "argument --requests: must be an integer >= 1"),
    ("generate hi --seed 99999999999999999999999", "argument --seed: must be a seed in"),
    ("generate hi --max-new-tokens 0", "argument --max-new-tokens: must be an integer >= 1"),
    ("generate hi --max-new-tokens 5000", "exceeds the model's max_len 2048"),
    ("generate hi --threads 1000", "argument --threads: must be a thread count in"),
    ("generate hi --repeats 0", "argument --repeats: must be an integer >= 1"),
    ("generate hi --method fast", "argument --method: invalid choice: 'fast'"),
    ("generate hi --checkpoint /nonexistent", "/nonexistent"),
    ("train --out /tmp/x --steps 0", "argument --steps: must be an integer >= 1, got 0"),
    ("train --out /tmp/x --lr -1", "argument --lr: must be a finite number"),
    ("train --out /tmp/x --val-fraction 1", r"argument --val-fraction: must be a finite number"),
    ("train --out /tmp/x --mixer mamba", "argument --mixer: invalid choice: 'mamba'"),
    ("train --out /tmp/x --context 5000", "--context 5000 exceeds --max-len 2048"),
    ("train --out /etc/passwd", "argument --out: /etc/passwd exists and is not a directory"),
    ("nonsense", "argument command: invalid choice: 'nonsense'"),
]


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own exit
        return exc.code


@pytest.mark.parametrize(("command", "message"), BAD, ids=[c for c, _ in BAD])
def test_bad_option_is_one_line_and_exit_2(command, message, capsys):
    assert run(command.split()) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("futurefill"), err
    assert re.search(message, err), err


def test_a_non_utf8_prompt_is_one_line(capsys):
    prompt = b"\xff\xfe".decode("utf-8", "surrogateescape")  # what Python makes of such argv
    assert run(["generate", prompt]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "futurefill generate: error: the prompt is not valid UTF-8 text\n"


def test_a_broken_pipe_ends_quietly():
    command = [sys.executable, "-m", "futurefill.cli", "generate", "hi", "--max-new-tokens", "300"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.read(3).startswith(b"hi")  # the prompt comes first, then the bytes
    proc.stdout.close()  # the reader goes away, as with `| head -c 3`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert err == ""


def test_run_command_turns_user_failures_into_one_line(capsys):
    def interrupted():
        raise KeyboardInterrupt

    def unwritable():
        raise PermissionError(13, "Permission denied", "/results/layer.json")

    def bad_combination():
        raise options.UsageError("--a and --b go together")

    assert options.run_command("futurefill x", interrupted) == 130
    assert options.run_command("futurefill x", unwritable) == 1
    assert options.run_command("futurefill x", bad_combination) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "futurefill x: interrupted",
        "futurefill x: error: [Errno 13] Permission denied: '/results/layer.json'",
        "futurefill x: error: --a and --b go together",
    ]


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_option_has_help_and_a_default():
    for name, parser in _subparsers(build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, (name, action.option_strings)
            shown = parser.formatter_class(name)._get_help_string(action)
            flag = action.nargs == 0  # store_true and the like: off unless given
            assert "default" in shown or flag or action.required, (name, action.option_strings)


def test_the_library_never_imports_the_command_line():
    """Only the command line itself and the benchmarks (which declare their options with
    futurefill.cli.options) import futurefill.cli."""
    import ast
    from pathlib import Path

    import futurefill

    root = Path(futurefill.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(name.split(".")[:2] == ["futurefill", "cli"] for name in names):
                importers.add(path.relative_to(root).parts[0])
    assert importers <= {"cli", "bench"}


@pytest.mark.parametrize(
    ("text", "size"), [("0", 0), ("512", 512), ("4K", 4096), ("3m", 3 << 20), ("1G", 1 << 30)]
)
def test_byte_sizes_take_binary_suffixes(text, size):
    from futurefill.cli.options import byte_size

    assert byte_size(text) == size


def test_serve_help_shows_each_default_once(capsys):
    assert run(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: None)" not in out and "(default: False)" not in out
    options = re.split(r"\n  (?=-)", out.split("options:")[1])
    for option in options:
        assert option.count("default") <= 1, option
    assert "(default: the bundled demo model)" in " ".join(out.split())


@pytest.mark.parametrize(
    ("host", "warns"),
    [
        ("127.0.0.1", False),
        ("::1", False),
        ("localhost", False),
        ("0.0.0.0", True),
        ("10.1.2.3", True),
        ("example.org", True),
    ],
)
def test_serve_warns_when_reachable_from_elsewhere_without_a_key(host, warns, monkeypatch, capsys):
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)  # nothing is bound
    monkeypatch.delenv("FUTUREFILL_API_KEY", raising=False)
    assert run(["serve", "--host", host]) == 0
    assert ("warning: --host" in capsys.readouterr().err) == warns
    if warns:
        assert run(["serve", "--host", host, "--api-key", "k"]) == 0
        assert "warning" not in capsys.readouterr().err
