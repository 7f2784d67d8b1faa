"""Offline batches on Ray Data (``futurefill batch --ray``): on a local Ray cluster (2 CPUs,
no dashboard, loopback), a pool of 2 actors gives, line for line, what the in-process run gives
(itself what generate() gives each prompt alone), bad lines included; an output cut short is
continued to every line exactly once; no Ray process is left at the end."""

from __future__ import annotations

import copy
import json
import os
import sys
import time

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from futurefill.cli import main  # noqa: E402
from futurefill.pretrained.tokenizers import ByteTokenizer  # noqa: E402
from futurefill.serving import Scheduler  # noqa: E402
from futurefill.serving.batch import run_batch  # noqa: E402
from futurefill.serving.options import BUNDLED_NAME, SchedulerOptions  # noqa: E402
from futurefill.serving.ray_batch import run_batch_on_ray  # noqa: E402

MODEL = BUNDLED_NAME
SETTINGS = SchedulerOptions(slots=2, threads=1)


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module, shut down at its end with every process it started."""
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    before = {p.pid for p in psutil.process_iter()}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    started = [p for p in psutil.process_iter() if p.pid not in before]
    yield
    ray.shutdown()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        p.is_running() and p.status() != "zombie" for p in started
    ):
        time.sleep(0.2)
    left = [p.pid for p in started if p.is_running() and p.status() != "zombie"]
    assert not left, f"Ray processes left: {left}"


def line(custom_id: str, **body) -> str:
    item = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": MODEL, **body},
    }
    return json.dumps(item)


@pytest.fixture(scope="module")
def batch_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "in.jsonl"
    lines = [
        line(
            f"r{i}",
            prompt=f"item {i}:",
            max_tokens=5 + i % 4,
            **({"temperature": 0} if i % 2 else {"seed": i}),
        )
        for i in range(10)
    ]
    lines.insert(3, "{broken")
    lines.insert(6, line("n", prompt="x", n=3))  # more samples than an actor's 2 slots
    lines.append(line("samples", prompt=["ab", "cd"], max_tokens=4, n=2, seed=1))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def expected(batch_file, tmp_path_factory):
    """The in-process run's output lines, without their random ids."""
    from futurefill import load_pretrained

    output = tmp_path_factory.mktemp("here") / "out.jsonl"
    scheduler = Scheduler(copy.deepcopy(load_pretrained()), ByteTokenizer(), slots=2)
    try:
        run_batch(
            scheduler,
            batch_file,
            output,
            model_name=MODEL,
            tokenizer=ByteTokenizer(),
            progress=False,
        )
    finally:
        scheduler.stop()
    return comparable(output)


def comparable(path) -> list:
    """Each line's custom_id, status, error message and choices (ids and times differ)."""
    rows = []
    for text in path.read_text().splitlines():
        item = json.loads(text)
        body = item["response"]["body"]
        choices = [(c["index"], c["text"], c["finish_reason"]) for c in body.get("choices", [])]
        error = item["error"] and item["error"]["message"]
        rows.append((item["custom_id"], item["response"]["status_code"], error, choices))
    return rows


def test_two_actors_give_the_in_process_results_line_for_line(
    cluster, batch_file, expected, tmp_path
):
    output = tmp_path / "out.jsonl"
    summary = run_batch_on_ray(
        SETTINGS, batch_file, output, actors=2, lines_per_batch=3, progress=False
    )
    assert comparable(output) == expected
    assert summary.written == len(expected) and summary.errors == 2


def test_an_output_cut_short_is_continued_to_every_line_once(
    cluster, batch_file, expected, tmp_path
):
    output = tmp_path / "out.jsonl"
    run_batch_on_ray(SETTINGS, batch_file, output, actors=1, progress=False)
    kept = output.read_text().splitlines()[:4]
    output.write_text("\n".join(kept) + '\n{"id": "batch_req_cut", "cust')
    assert (
        main(
            [
                "batch",
                str(batch_file),
                str(output),
                "--ray",
                "--actors",
                "2",
                "--slots",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert comparable(output) == expected
    assert output.read_text().splitlines()[:4] == kept


def test_without_ray_the_option_says_what_to_install(tmp_path, batch_file, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    assert main(["batch", str(batch_file), str(tmp_path / "o.jsonl"), "--ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install futurefill[ray]" in err
    assert main(["batch", str(batch_file), str(tmp_path / "o.jsonl"), "--actors", "2"]) == 2
    assert "they go with --ray" in capsys.readouterr().err
