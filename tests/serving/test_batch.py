"""Offline batches (``futurefill batch``, :func:`run_batch`): every line gets, in the input's
order, exactly the completion generate() gives its prompt alone (greedy and seeded, several
samples); bad lines get error lines and the rest run; a job killed midway and run again ends with
every line exactly once; an output that does not continue its input is refused."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from futurefill import load_pretrained
from futurefill.pretrained.tokenizers import ByteTokenizer
from futurefill.serving import Scheduler
from futurefill.serving.batch import BatchError, read_batch, resume_point, run_batch
from reference import alone

MODEL = "futurefill-pydoc-stu"


@pytest.fixture(scope="module")
def model():
    return load_pretrained()


def line(custom_id: str, **body) -> str:
    body = {"model": MODEL, **body}
    item = {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}
    return json.dumps(item)


def read_output(path) -> list[dict]:
    return [json.loads(text) for text in path.read_text().splitlines()]


def test_every_line_gets_what_its_prompt_gets_alone_in_order(tmp_path, model):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prompts = ["def f(x):", "import os", "The with statement", "class A:", "x = [", "Lambda"]
    lines = [
        line(f"r{i}", prompt=p, max_tokens=6 + i, **({"temperature": 0} if i % 2 else {"seed": i}))
        for i, p in enumerate(prompts)
    ]
    lines.append(line("samples", prompt=["ab", "cd"], max_tokens=5, n=2, seed=9, temperature=0.7))
    lines.append(line("too many", prompt=["a", "b", "c"], max_tokens=2))  # over the queue
    source.write_text("\n".join(lines) + "\n\n")  # a blank line at the end: skipped
    scheduler = Scheduler(copy.deepcopy(model), ByteTokenizer(), slots=3, queue_size=2)
    try:
        summary = run_batch(
            scheduler, source, output, model_name=MODEL, tokenizer=ByteTokenizer(), progress=False
        )
    finally:
        scheduler.stop()
    results = read_output(output)
    ids = [f"r{i}" for i in range(6)]
    assert [r["custom_id"] for r in results] == [*ids, "samples", "too many"]
    assert results[-1]["response"]["status_code"] == 400
    assert (
        "3 prompts exceed the 2 requests the server's queue holds"
        in results[-1]["error"]["message"]
    )
    results = results[:-1]
    for i, prompt in enumerate(prompts):
        body = results[i]["response"]["body"]
        assert results[i]["response"]["status_code"] == 200 and results[i]["error"] is None
        seed = None if i % 2 else i
        assert body["choices"][0]["text"] == alone(model, prompt, 6 + i, seed=seed), i
        assert body["usage"]["completion_tokens"] == 6 + i
    choices = results[-1]["response"]["body"]["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for c in choices:
        prompt = ["ab", "cd"][c["index"] // 2]
        assert c["text"] == alone(model, prompt, 5, temperature=0.7, seed=9 + c["index"] % 2)
    assert summary.written == 8 and summary.errors == 1 and summary.tokens == 51 + 4 * 5


def test_bad_lines_get_error_lines_and_the_rest_runs(tmp_path, model):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(
        "\n".join(
            [
                line("ok", prompt="def", max_tokens=3, temperature=0),
                "{not json",
                json.dumps(["a list"]),
                json.dumps({"method": "POST", "url": "/v1/completions", "body": {}}),
                line("ok", prompt="again", max_tokens=2),
                json.dumps(
                    {"custom_id": "u", "method": "POST", "url": "/v1/chat/completions", "body": {}}
                ),
                json.dumps(
                    {"custom_id": "m", "method": "GET", "url": "/v1/completions", "body": {}}
                ),
                line("big", prompt="x", max_tokens=99999),
                line("n", prompt="x", n=9),
                line("stream", prompt="x", stream=True),
                line("model", prompt="x").replace(MODEL, "gpt-4"),
                json.dumps(
                    {
                        "custom_id": "x",
                        "method": "POST",
                        "url": "/v1/completions",
                        "body": {},
                        "extra": 1,
                    }
                ),
                line("last", prompt="end", max_tokens=2, temperature=0),
            ]
        )
    )
    scheduler = Scheduler(copy.deepcopy(model), ByteTokenizer(), slots=4)
    try:
        summary = run_batch(
            scheduler, source, output, model_name=MODEL, tokenizer=ByteTokenizer(), progress=False
        )
    finally:
        scheduler.stop()
    results = read_output(output)
    statuses = [(r["custom_id"], r["response"]["status_code"]) for r in results]
    assert statuses == [
        ("ok", 200),
        (None, 400),
        (None, 400),
        (None, 400),
        ("ok", 400),
        ("u", 400),
        ("m", 400),
        ("big", 400),
        ("n", 400),
        ("stream", 400),
        ("model", 404),
        ("x", 400),
        ("last", 200),
    ]
    messages = [r["error"]["message"] for r in results if r["error"]]
    for expected in [
        "line 2 is not JSON",
        "a line must be a JSON object",
        "custom_id must be a non-empty string",
        "custom_id 'ok' repeats line 1",
        "url must be /v1/completions",
        "method must be POST",
        "max_tokens:",
        "n: 9 samples exceed the server's 4 slots",
        "stream must be false",
        "the model 'gpt-4' does not exist",
        "unknown field 'extra'",
    ]:
        assert any(expected in m for m in messages), expected
    assert results[-1]["response"]["body"]["choices"][0]["text"] == alone(model, "end", 2)
    assert summary.errors == 11 and summary.written == 13


def test_a_killed_job_run_again_ends_with_every_line_once(tmp_path, model):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    count = 24
    source.write_text(
        "\n".join(
            line(f"r{i}", prompt=f"item {i}:", max_tokens=24, temperature=0) for i in range(count)
        )
        + "\n"
    )
    command = [
        sys.executable,
        "-m",
        "futurefill.cli",
        "batch",
        str(source),
        str(output),
        "--slots",
        "2",
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if output.exists() and output.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the job ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    first = output.read_text().count("\n")
    assert 3 <= first < count
    with open(output, "a") as out:  # as if killed in the middle of a write
        out.write('{"id": "batch_req_cut", "custom_id": "r')
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{first} done before" in rerun.stderr
    results = read_output(output)
    assert [r["custom_id"] for r in results] == [f"r{i}" for i in range(count)]
    for i in (0, first, count - 1):  # before the kill, just after it, the last
        text = results[i]["response"]["body"]["choices"][0]["text"]
        assert text == alone(model, f"item {i}:", 24), i


def test_an_output_that_does_not_continue_the_input_is_refused(tmp_path, capsys):
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(line("a", prompt="x") + "\n" + line("b", prompt="y") + "\n")
    output.write_text(json.dumps({"custom_id": "b"}) + "\n")
    with pytest.raises(BatchError, match="its line 1 is custom_id 'b', the input's 'a'"):
        resume_point(read_batch(source), output)
    output.write_text("\n".join(json.dumps({"custom_id": c}) for c in "abc") + "\n")
    with pytest.raises(BatchError, match="holds 3 lines, more than the input's 2"):
        resume_point(read_batch(source), output)
    from futurefill.cli import main

    assert main(["batch", str(source), str(output), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument output:" in err
    assert main(["batch", str(tmp_path / "missing.jsonl"), str(output)]) == 2
    assert "argument input:" in capsys.readouterr().err
    assert main(["batch", str(source), str(source)]) == 2
    assert "it must differ from the input" in capsys.readouterr().err
