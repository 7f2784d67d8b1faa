"""futurefill serve, for real: a server process on 127.0.0.1 started and stopped by these tests,
driven with the openai package and plain HTTP. Completions (plain, streamed, concurrent) are what
generate() gives each request alone; every bad request is a 4xx with a JSON error naming the
field; a flood past the queue gets 429 with Retry-After; a client that drops mid-stream frees its
slot; SIGTERM with a request in flight ends it cleanly and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from futurefill import generate, load_pretrained
from futurefill.demo.data import encode
from reference import alone

openai = pytest.importorskip("openai")

MODEL = "futurefill-pydoc-stu"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``futurefill serve`` in a subprocess on a free loopback port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "futurefill.cli", "serve", "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not start: {self.process.stdout.read()}")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()

    def post(
        self,
        body: bytes | dict,
        path: str = "/v1/completions",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data, {"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read()), dict(error.headers)

    def metric(self, name: str) -> float:
        text = self.get("/metrics")[1]
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def server():
    server = Server("--slots", "4")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def model():
    return load_pretrained()


def test_openai_client_completions_plain_and_streamed(server, model):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == [MODEL]
    prompt = "The with statement"
    done = client.completions.create(model=MODEL, prompt=prompt, max_tokens=30, temperature=0)
    assert done.choices[0].text == alone(model, prompt, 30)
    assert done.choices[0].finish_reason == "length"
    assert done.usage.prompt_tokens == 18 and done.usage.completion_tokens == 30
    parts = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=30, temperature=0.8, seed=5, stream=True
    )
    text = "".join(chunk.choices[0].text for chunk in parts)
    assert text == alone(model, prompt, 30, temperature=0.8, seed=5)


def test_openai_client_n_samples_of_a_list_of_prompts_plain_and_streamed(server, model):
    """Choices ordered by prompt, then sample; sample i of a seeded request is the request
    alone with seed + i; streamed chunks carry their choice's index and logprobs."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    prompts = ["def f(x):", "import os"]
    options = dict(model=MODEL, max_tokens=12, temperature=0.7, seed=3, n=2, logprobs=2)
    done = client.completions.create(prompt=prompts, **options)
    assert [c.index for c in done.choices] == [0, 1, 2, 3]
    for choice in done.choices:
        prompt, sample = prompts[choice.index // 2], choice.index % 2
        assert choice.text == alone(model, prompt, 12, temperature=0.7, seed=3 + sample)
        logprobs = choice.logprobs
        assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 12
        for token, logprob, top in zip(
            logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
        ):
            assert top[token] == logprob and len(top) in (2, 3)
            assert max(top.values()) >= logprob
    assert done.usage.prompt_tokens == 9 + 9 and done.usage.completion_tokens == 4 * 12
    texts, logprobs = {}, {}
    for chunk in client.completions.create(prompt=prompts, stream=True, **options):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.logprobs is not None:
                logprobs.setdefault(choice.index, []).extend(choice.logprobs.token_logprobs)
    assert texts == {c.index: c.text for c in done.choices}
    for c in done.choices:  # float32, batched beside other rows than before: rounding apart
        assert logprobs[c.index] == pytest.approx(c.logprobs.token_logprobs, abs=1e-4)


def test_echo_with_logprobs_scores_a_continuation_as_lm_eval_does(server, model):
    """lm-evaluation-harness's loglikelihood: context + continuation as token ids, echo,
    logprobs 1, max_tokens 1; the prompt's token logprobs (the first null) are the forward's."""
    context, continuation = encode("The with statement").tolist(), encode(" is").tolist()
    ids = context + continuation
    body = {"model": MODEL, "prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1}
    code, reply, _ = server.post({**body, "temperature": 0})
    assert code == 200
    (choice,) = reply["choices"]
    logprobs = choice["logprobs"]
    assert len(logprobs["token_logprobs"]) == len(ids) + 1 and logprobs["token_logprobs"][0] is None
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)
    for i in range(1, len(ids)):
        assert abs(logprobs["token_logprobs"][i] - float(expected[i - 1, ids[i]])) < 1e-4
    score = sum(logprobs["token_logprobs"][len(context) : len(ids)])
    want = sum(float(expected[i - 1, ids[i]]) for i in range(len(context), len(ids)))
    assert abs(score - want) < 1e-4
    assert choice["text"].startswith("The with statement is")
    assert reply["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": 1,
        "total_tokens": len(ids) + 1,
    }
    code, reply, _ = server.post({**body, "max_tokens": 0, "logprobs": None})
    assert code == 200 and reply["choices"][0]["text"] == "The with statement is"
    assert reply["choices"][0]["logprobs"] is None and reply["usage"]["completion_tokens"] == 0


def test_best_of_returns_n_and_counts_every_sample(server):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 5, "n": 1, "best_of": 3, "seed": 1}
    code, reply, _ = server.post(body)
    assert code == 200 and [c["index"] for c in reply["choices"]] == [0]
    assert reply["usage"]["completion_tokens"] == 15


def test_tokenizer_endpoints(server):
    code, info = server.get("/tokenizer_info")
    info = json.loads(info)
    assert code == 200 and info["eos_token"] is None and info["vocab_size"] == 256
    code, reply, _ = server.post({"model": MODEL, "prompt": "héllo"}, "/tokenize")
    assert code == 200 and reply["tokens"] == list("héllo".encode()) and reply["count"] == 6
    code, reply, _ = server.post({"tokens": reply["tokens"]}, "/detokenize")
    assert code == 200 and reply == {"prompt": "héllo"}
    for path, body, param in [
        ("/tokenize", {"prompt": 3}, "prompt"),
        ("/tokenize", {"prompt": "a", "messages": []}, "messages"),
        ("/tokenize", {"prompt": "a", "add_special_tokens": "no"}, "add_special_tokens"),
        ("/detokenize", {"tokens": [1, 300]}, "tokens"),
        ("/detokenize", {"tokens": "ab"}, "tokens"),
    ]:
        code, reply, _ = server.post(body, path)
        assert code == 400 and reply["error"]["param"] == param, (path, body)
    code, reply, _ = server.post({"model": "gpt-4", "prompt": "a"}, "/tokenize")
    assert code == 404 and reply["error"]["param"] == "model"


def test_a_repeated_prompt_hits_the_prefix_cache(server):
    body = {"model": MODEL, "prompt": "A prompt seen twice", "max_tokens": 3, "temperature": 0}
    hits = server.metric('futurefill_prefix_cache_lookups_total{result="hit"}')
    first = server.post(body)[1]["choices"][0]["text"]
    second = server.post(body)[1]["choices"][0]["text"]
    assert first == second
    assert server.metric('futurefill_prefix_cache_lookups_total{result="hit"}') == hits + 1
    assert server.metric("futurefill_prefix_cache_bytes") > 0


def test_concurrent_clients_each_get_their_own_completion(server, model):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    prompts = ["def f(x):", "import os", "The try statement", "class A:", "x = [", "Lambda"] * 2
    results = [None] * len(prompts)

    def go(i):
        sampling = {"temperature": 0} if i % 2 else {"temperature": 0.7, "seed": i}
        results[i] = (
            client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=20 + i, **sampling)
            .choices[0]
            .text
        )

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for i, prompt in enumerate(prompts):
        sampling = {} if i % 2 else {"temperature": 0.7, "seed": i}
        assert results[i] == alone(model, prompt, 20 + i, **sampling), i


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        (b"{not json", 400, None, "the body is not valid JSON"),
        (b"[1, 2]", 400, None, "must be a JSON object"),
        ({"model": "gpt-4", "prompt": "a"}, 404, "model", "the model 'gpt-4' does not exist"),
        ({"prompt": "a"}, 400, "model", "model is required"),
        ({"model": MODEL, "prompt": ""}, 400, "prompt", "prompt must not be empty"),
        ({"model": MODEL, "prompt": 3}, 400, "prompt", "prompt must be a non-empty string"),
        ({"model": MODEL, "prompt": [300]}, 400, "prompt", r"token ids must be in \[0, 256\)"),
        ({"model": MODEL, "prompt": "a", "max_tokens": -1}, 400, "max_tokens", "max_tokens must"),
        ({"model": MODEL, "prompt": "a", "max_tokens": 5000}, 400, "max_tokens", "exceed"),
        ({"model": MODEL, "prompt": "a", "temperature": 3}, 400, "temperature", r"\[0.0, 2.0\]"),
        ({"model": MODEL, "prompt": "a", "top_p": 0}, 400, "top_p", r"top_p must be in \(0.0"),
        ({"model": MODEL, "prompt": "a", "top_k": 0}, 400, "top_k", "top_k must be an integer"),
        ({"model": MODEL, "prompt": "a", "seed": "x"}, 400, "seed", "seed must be an integer"),
        ({"model": MODEL, "prompt": "a", "n": 0}, 400, "n", "n must be an integer >= 1"),
        (
            {"model": MODEL, "prompt": "a", "n": 5},
            400,
            "n",
            "5 samples exceed the server's 4 slots",
        ),
        ({"model": MODEL, "prompt": "a", "n": 2, "best_of": 1}, 400, "best_of", "best_of must be"),
        ({"model": MODEL, "prompt": "a", "best_of": 9}, 400, "best_of", "exceed the server's 4"),
        (
            {"model": MODEL, "prompt": "a", "best_of": 2, "stream": True},
            400,
            "best_of",
            "cannot be streamed",
        ),
        ({"model": MODEL, "prompt": "a", "logprobs": 21}, 400, "logprobs", r"in \[0, 20\]"),
        ({"model": MODEL, "prompt": "a", "logprobs": True}, 400, "logprobs", "logprobs must"),
        ({"model": MODEL, "prompt": "a", "echo": "yes"}, 400, "echo", "echo must be true"),
        (
            {"model": MODEL, "prompt": "a" * 5000, "echo": True, "max_tokens": 0},
            400,
            "prompt",
            "its 5000 tokens exceed the model's context",
        ),
        ({"model": MODEL, "prompt": []}, 400, "prompt", "prompt must be a non-empty string"),
        ({"model": MODEL, "prompt": ["a", [1]]}, 400, "prompt", "only strings or only"),
        ({"model": MODEL, "prompt": [[1], []]}, 400, "prompt", "only strings or only"),
        ({"model": MODEL, "prompt": ["a", ""]}, 400, "prompt", "prompt must not be empty"),
        ({"model": MODEL, "prompt": ["a", "b" * 5000]}, 400, "prompt", "5000 tokens exceed"),
        ({"model": MODEL, "prompt": "a", "stop": ["a"] * 33}, 400, "stop", "up to 32"),
        ({"model": MODEL, "prompt": "a", "stream": "yes"}, 400, "stream", "true or false"),
        ({"model": MODEL, "prompt": "a", "suffix": "b"}, 400, "suffix", "not supported"),
        ({"model": MODEL, "prompt": "a", "frobnicate": 1}, 400, "frobnicate", "unknown field"),
    ],
)
def test_bad_requests_get_a_json_error_naming_the_field(server, body, status, param, message):
    import re

    code, reply, _ = server.post(body)
    assert code == status
    error = reply["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert re.search(message, error["message"]), error["message"]
    assert server.get("/health")[0] == 200  # and the server is fine


def test_a_dropped_stream_frees_its_slot(server):
    cancelled = server.metric('futurefill_requests_finished_total{finish_reason="cancelled"}')
    body = json.dumps({"model": MODEL, "prompt": "a", "max_tokens": 1500, "stream": True})
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        received = b""
        while b"data: " not in received:
            received += sock.recv(4096)  # the stream has started; now the client goes
    cancelled_metric = 'futurefill_requests_finished_total{finish_reason="cancelled"}'
    deadline = time.monotonic() + 120  # a condition with a generous bound, whatever the load
    while time.monotonic() < deadline and (
        server.metric("futurefill_running_rows") or server.metric(cancelled_metric) < cancelled + 1
    ):
        time.sleep(0.05)
    assert server.metric("futurefill_running_rows") == 0
    assert (
        server.metric('futurefill_requests_finished_total{finish_reason="cancelled"}')
        == cancelled + 1
    )


def test_metrics_report_the_queue_rows_latencies_and_bytes_per_slot(server):
    text = server.get("/metrics")[1]
    for name in (
        "futurefill_queue_length",
        "futurefill_running_rows",
        "futurefill_generated_tokens_total",
        "futurefill_time_to_first_token_seconds_bucket",
        "futurefill_inter_token_seconds_bucket",
        "futurefill_slot_bytes",
    ):
        assert name in text, name
    assert server.metric("futurefill_slot_bytes") > 0


def test_a_flood_past_the_queue_gets_429_with_retry_after():
    server = Server("--slots", "1", "--queue-size", "1")
    try:
        long = {"model": MODEL, "prompt": "a", "max_tokens": 2000}
        threads = [threading.Thread(target=server.post, args=(long,)) for _ in range(2)]
        for thread, (name, count) in zip(  # one running, then one waiting
            threads, [("futurefill_running_rows", 1), ("futurefill_queue_length", 1)], strict=True
        ):
            thread.start()
            deadline = time.monotonic() + 120  # each wait its own generous bound
            while server.metric(name) < count and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.metric(name) >= count, name
        code, reply, headers = server.post({"model": MODEL, "prompt": "b", "max_tokens": 2})
        assert code == 429 and headers.get("retry-after") == "1"
        assert "overloaded" in reply["error"]["message"]
    finally:
        assert server.stop() == 0  # the two long requests in flight: cancelled cleanly
    for thread in threads:
        thread.join(30)


def test_sigterm_with_a_request_in_flight_ends_it_and_exits_cleanly():
    server = Server("--slots", "2")
    body = json.dumps({"model": MODEL, "prompt": "a", "max_tokens": 400, "stream": True})
    received = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        received += sock.recv(4096)
        os.kill(server.process.pid, signal.SIGTERM)
        while chunk := sock.recv(65536):
            received += chunk
    assert server.process.wait(30) == 0
    assert received.rstrip().endswith(b"0")  # the chunked stream ended properly
    assert b'"finish_reason": "length"' in received or b"[DONE]" in received


def test_an_evo_checkpoint_served_with_the_modal_method():
    """Evo 1 (tests/fixtures/evo1_tiny), its LI filters by their recurrence: concurrent
    completions through chunked prefill, each what generate() gives it alone (greedy), its
    characters decoded by Evo's tokenizer."""
    from pathlib import Path

    from futurefill.pretrained.tokenizers import CharTokenizer

    directory = Path(__file__).parent.parent / "fixtures" / "evo1_tiny"
    evo = load_pretrained(directory)
    tokenizer = CharTokenizer()
    server = Server("--model", str(directory), "--method", "modal", "--slots", "3",
                    "--prefill-chunk", "4")  # fmt: skip
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        prompts = ["ACGTACGTAC", "TTGACA", "G", "ACGGTCCATAGGAC"]

        def expected(prompt: str) -> str:
            ids = torch.tensor([tokenizer.encode(prompt)])
            decoder = tokenizer.stream_decoder()
            return "".join(decoder.push(int(t)) for t in generate(evo, ids, 12)[0])

        def ask(prompt: str) -> str:
            reply = client.completions.create(
                model="evo1_tiny", prompt=prompt, max_tokens=12, temperature=0
            )
            return reply.choices[0].text

        threads, got = [], {}
        for prompt in prompts:
            threads.append(threading.Thread(target=lambda p=prompt: got.update({p: ask(p)})))
            threads[-1].start()
        for thread in threads:
            thread.join(timeout=120)
        assert got == {prompt: expected(prompt) for prompt in prompts}
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def keyed_server():
    """A server whose key comes from the environment (the process list never shows it)."""
    server = Server("--slots", "2", env={"FUTUREFILL_API_KEY": "s3cret-key"})
    yield server
    assert server.stop() == 0


def test_only_requests_with_the_key_get_in(keyed_server):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    before = keyed_server.metric("futurefill_generated_tokens_total")
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "s3cret-key"},
        {"X-API-Key": "s3cret-key"},
        {"Authorization": "Bearer s3cret-key-and-more"},
    ):
        for path, payload in [
            ("/v1/completions", body),
            ("/tokenize", {"prompt": "x"}),
            ("/detokenize", {"tokens": [65]}),
        ]:
            code, reply, reply_headers = keyed_server.post(payload, path, headers)
            assert code == 401, (path, headers)
            assert reply["error"]["code"] == "invalid_api_key"
            assert reply["error"]["type"] == "invalid_request_error"
            assert reply_headers["www-authenticate"] == "Bearer"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            keyed_server.get("/v1/models", headers)
    assert keyed_server.metric("futurefill_generated_tokens_total") == before  # no slot reached
    assert keyed_server.get("/health")[0] == 200 and keyed_server.get("/metrics")[0] == 200
    client = openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="s3cret-key")
    done = client.completions.create(model=MODEL, prompt="x", max_tokens=2, temperature=0)
    assert len(done.choices[0].text) >= 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed_server.url + "/v1", api_key="nope").models.list()
    code, reply, _ = keyed_server.post(
        {"prompt": "x"}, "/tokenize", {"Authorization": "Bearer s3cret-key"}
    )
    assert code == 200 and reply["tokens"] == [120]
