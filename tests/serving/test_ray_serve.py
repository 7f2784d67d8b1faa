"""futurefill serve on Ray Serve (futurefill.serving.ray_serve, ``futurefill serve --ray``).

One local Ray cluster for the module (2 CPUs, no dashboard, a 100 MB object store, usage stats
off, Ray's token auth off so that nothing is written under the home directory, its sessions in
a temporary directory removed at the end), its Serve HTTP proxy on a free loopback port, shut
down at the end with every Ray process it started gone (checked by PID). On it: the bundled
model as 2 replicas of 2 slots answering concurrent clients of the openai package (plain and
streamed, greedy and seeded) exactly as generate() alone; the same 4xx/429 JSON as the single
server; a replica killed mid-run replaced by Serve, later requests answered; a second
application with an API key under a route prefix, which lets nothing without the key reach a
slot. The command line: ``futurefill serve --ray`` in a subprocess (its own local cluster,
started before the module's) answers, with the key, and exits 0 on SIGTERM leaving no Ray
process; its bad options are one line and exit 2, with or without Ray installed.

The Ray tests are skipped where ``ray[serve]`` is not installed (``pip install futurefill[ray]``).
About 80 s on a 2-core VM, most of it Ray starting and stopping clusters and replicas.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from futurefill import load_pretrained
from futurefill.cli import main
from futurefill.serving.ray_serve import Options
from reference import alone

MODEL = "futurefill-pydoc-stu"
KEY = "r4y-s3cret"
#: What keeps a local test cluster small, quiet and out of the home directory (the CLI's too).
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES": str(100 * 1024 * 1024),
}
HAS_RAY = all(importlib.util.find_spec(name) for name in ("ray", "fastapi", "aiohttp"))
# Ray 2.60's own models, under pydantic 2.12+.
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")
needs_ray = pytest.mark.skipif(
    not HAS_RAY, reason="ray[serve] is not installed (pip install futurefill[ray])"
)


@contextlib.contextmanager
def bounded(seconds: float, what: str):
    """TimeoutError if the block runs past ``seconds`` (Ray's waits are Python loops, which a
    SIGALRM interrupts); the fixtures' teardown then takes the cluster down as usual."""

    def expired(signum, frame):
        raise TimeoutError(f"{what} took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> set[int]:
    import psutil  # Ray vendors it (ray/thirdparty_files, on sys.path once ray is imported)

    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def assert_gone(pids: set[int], timeout: float = 60) -> None:
    """Every process of ``pids`` has ended (within ``timeout`` seconds)."""
    import psutil

    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    left = []
    for process in alive:
        try:
            left.append((process.pid, process.name()))
        except psutil.NoSuchProcess:
            pass
    assert left == [], f"Ray processes left: {left}"


def post(url: str, body: bytes | dict, headers: dict[str, str] | None = None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data, {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def openai_client(openai, url: str, key: str = "unused"):
    """The openai package's client of the server at ``url``: no retries, bounded in time."""
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def metric(url: str, name: str) -> float:
    text = get(url + "/metrics")[1]
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.fixture(scope="module")
def model():
    return load_pretrained()


# ---------------------------------------------------------------- the command line, no Ray needed


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("--ray --replicas 0", "argument --replicas: must be an integer >= 1, got 0"),
        ("--ray --min-replicas 3 --max-replicas 2", "--min-replicas 3 is above --max-replicas 2"),
        ("--ray --replicas 2 --max-replicas 3", "--replicas or --min-replicas/--max-replicas"),
        ("--ray --min-replicas 1", "--min-replicas needs --max-replicas"),
        ("--ray --max-replicas 0", "argument --max-replicas: must be an integer >= 1, got 0"),
        ("--ray --target-ongoing-requests 0", "argument --target-ongoing-requests: must be"),
        ("--replicas 2", "--replicas needs --ray"),
        ("--address auto", "--address needs --ray"),
        ("--ray --model /no/such/dir", "argument --model: checkpoint directory not found"),
    ],
)
def test_bad_ray_options_are_one_line_and_exit_2(command, message, capsys):
    """Checked before Ray is imported: the same with or without it."""
    try:
        code = main(["serve", *command.split()])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("futurefill serve: error: "), err
    assert message in err, err


def test_without_ray_the_flag_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["serve", "--ray"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        "futurefill serve: error: argument --ray: Ray Serve is not installed: "
        "pip install futurefill[ray]\n"
    )


def test_application_options_from_a_config_files_args(monkeypatch):
    """``serve run ...:build_app slots=2`` gives strings; a config file typed values."""
    monkeypatch.setenv("FUTUREFILL_API_KEY", "from-env")
    options = Options.from_args({"slots": "2", "compile": "false", "max_replicas": 3})
    assert (options.slots, options.compile, options.max_replicas) == (2, False, 3)
    assert options.api_key == "from-env" and "from-env" not in repr(options)
    assert options.autoscaling == {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 2,
    }
    assert Options.from_args({"api_key": "given"}).api_key == "given"
    for args, message in [
        ({"slot": 2}, "unknown option 'slot'"),
        ({"slots": 0}, "slots must be an integer >= 1"),
        ({"slots": "two"}, "slots must be a int"),
        ({"method": "fast"}, "method must be one of"),
        ({"min_replicas": 4, "max_replicas": 2}, "min_replicas 4 is above max_replicas 2"),
        ({"num_replicas": 2, "max_replicas": 2}, "not both"),
        ({"target_ongoing_requests": 4}, "need max_replicas"),
    ]:
        with pytest.raises(ValueError, match=message):
            Options.from_args(args)


@needs_ray
def test_the_deployment_fills_its_batch_and_reserves_its_threads():
    from futurefill.serving.ray_serve import deployment

    fixed = deployment(Options(slots=4, queue_size=3, threads=2, num_replicas=2))
    assert fixed.max_ongoing_requests == 4 + 3 and fixed.num_replicas == 2
    assert fixed.ray_actor_options["num_cpus"] == 2
    assert ("num_gpus" in fixed.ray_actor_options) == torch.cuda.is_available()
    scaled = deployment(Options(slots=4, min_replicas=0, max_replicas=3))
    config = scaled._deployment_config.autoscaling_config
    assert (config.min_replicas, config.max_replicas, config.target_ongoing_requests) == (0, 3, 4)


# ------------------------------------------------------------- `futurefill serve --ray`, its own


@needs_ray
def test_the_command_serves_on_a_local_cluster_and_stops_cleanly_on_sigterm(model):
    """First in the module, before the module's cluster starts: one local cluster at a time."""
    import ray  # noqa: F401  (puts Ray's psutil on the path)

    port = free_port()
    command = [sys.executable, "-m", "futurefill.cli", "serve", "--ray", "--port", str(port)]
    command += ["--slots", "2", "--replicas", "1"]
    temp = tempfile.mkdtemp(prefix="ffray-")  # Ray's sessions and logs, removed at the end
    env = {**os.environ, **RAY_ENV, "RAY_TMPDIR": temp, "FUTUREFILL_API_KEY": KEY}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    pids: set[int] = set()
    try:
        lines = []
        deadline = time.monotonic() + 150
        # Read on a thread: the loop below must not block past its deadline.
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        while not any(f"127.0.0.1:{port}/v1" in line for line in lines):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        pids = descendants(process.pid)
        assert len(pids) >= 3  # a local cluster: the GCS, the raylet, workers ...
        url = f"http://127.0.0.1:{port}"
        body = {"model": MODEL, "prompt": "The with statement", "max_tokens": 12}
        code, reply, _ = post(url + "/v1/completions", {**body, "temperature": 0})
        assert code == 401 and reply["error"]["code"] == "invalid_api_key"
        code, reply, _ = post(
            url + "/v1/completions",
            {**body, "temperature": 0},
            {"Authorization": f"Bearer {KEY}"},
        )
        assert code == 200
        assert reply["choices"][0]["text"] == alone(model, "The with statement", 12)
        pids |= descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_gone(pids)
    shutil.rmtree(temp, ignore_errors=True)


# ------------------------------------------------------------------ the module's cluster


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster and Serve's HTTP proxy on a free loopback port: its URL. At the end,
    Serve and the cluster are shut down and every process they ran is gone."""
    if not HAS_RAY:
        pytest.skip("ray[serve] is not installed (pip install futurefill[ray])")
    temp = tempfile.mkdtemp(prefix="ffray-")  # Ray's sessions and logs, removed at the end
    env = {**RAY_ENV, "RAY_TMPDIR": temp}
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    import ray
    from ray import serve

    pids: set[int] = set()
    try:
        with bounded(120, "starting Ray and Serve"):
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                object_store_memory=100 * 1024 * 1024,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
            pids = descendants(os.getpid())
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        pids |= descendants(os.getpid())
        try:
            with bounded(60, "shutting Serve down"):
                serve.shutdown()
        finally:
            ray.shutdown()
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    assert_gone(pids)
    shutil.rmtree(temp, ignore_errors=True)


def replicas(app: str) -> tuple[dict, set[str]]:
    """The replica states Serve reports for ``app`` and its replicas' actor names."""
    import ray
    from ray import serve

    states = serve.status().applications[app].deployments["FutureFill"].replica_states
    prefix = f"SERVE_REPLICA::{app}#"
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    return states, {name for name in names if name.startswith(prefix)}


@pytest.fixture(scope="module")
def two_replicas(cluster):
    """The bundled model as 2 replicas of 2 slots (half a CPU each: the keyed application and a
    replacement fit beside them), at the root."""
    from ray import serve

    from futurefill.serving.ray_serve import build_app

    args = {"slots": 2, "queue_size": 8, "num_replicas": 2, "threads": 1, "num_cpus": 0.5}
    with bounded(120, "deploying 2 replicas"):
        serve.run(build_app(args), name="futurefill", route_prefix="/")
    assert replicas("futurefill")[0] == {"RUNNING": 2}
    return cluster


def test_two_replicas_answer_concurrent_clients_as_generate_alone(two_replicas, model):
    openai = pytest.importorskip("openai")
    client = openai_client(openai, two_replicas)
    assert [m.id for m in client.models.list()] == [MODEL]
    prompts = ["def f(x):", "import os", "The try statement", "class A:", "x = [", "Lambda"]
    results: dict[int, str] = {}

    def go(i: int) -> None:
        sampling = {"temperature": 0} if i % 2 else {"temperature": 0.7, "seed": i}
        options = dict(model=MODEL, prompt=prompts[i], max_tokens=16 + i, **sampling)
        if i % 3 == 0:
            stream = client.completions.create(stream=True, **options)
            results[i] = "".join(chunk.choices[0].text for chunk in stream)
        else:
            results[i] = client.completions.create(**options).choices[0].text

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for i, prompt in enumerate(prompts):
        sampling = {} if i % 2 else {"temperature": 0.7, "seed": i}
        assert results.get(i) == alone(model, prompt, 16 + i, **sampling), i
    code, text = get(two_replicas + "/health")
    assert code == 200 and json.loads(text) == {"status": "ok"}
    assert metric(two_replicas, "futurefill_slots") == 2
    code, reply, _ = post(two_replicas + "/tokenize", {"prompt": "hé"})
    assert code == 200 and reply["tokens"] == list("hé".encode())


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        (b"{not json", 400, None, "the body is not valid JSON"),
        ({"model": "gpt-4", "prompt": "a"}, 404, "model", "the model 'gpt-4' does not exist"),
        ({"model": MODEL, "prompt": "a", "temperature": 3}, 400, "temperature", "[0.0, 2.0]"),
        ({"model": MODEL, "prompt": "a", "n": 3}, 400, "n", "3 samples exceed the server's 2"),
        ({"model": MODEL, "prompt": "a", "frobnicate": 1}, 400, "frobnicate", "unknown field"),
    ],
)
def test_bad_requests_get_the_single_servers_errors(two_replicas, body, status, param, message):
    code, reply, _ = post(two_replicas + "/v1/completions", body)
    assert code == status
    error = reply["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert message in error["message"], error["message"]


def test_a_request_past_a_replicas_queue_is_refused_naming_the_prompt(two_replicas):
    """12 prompts in one request: a replica's queue of 8 can never take them all, and none is
    queued (the single server's rule); the replica stays healthy."""
    body = {"model": MODEL, "prompt": [f"p{i}" for i in range(12)], "max_tokens": 300}
    code, reply, _ = post(two_replicas + "/v1/completions", body)
    assert code == 400 and reply["error"]["param"] == "prompt", reply
    assert "12 prompts exceed the 8 requests" in reply["error"]["message"]
    assert get(two_replicas + "/health")[0] == 200


def test_a_killed_replica_is_replaced_and_later_requests_succeed(two_replicas, model):
    import ray

    _, before = replicas("futurefill")
    body = {"model": MODEL, "prompt": "a", "max_tokens": 400, "stream": True}
    outcomes: list[object] = []

    def post_raw() -> None:  # in flight while a replica goes: it ends, or fails, never hangs
        request = urllib.request.Request(
            two_replicas + "/v1/completions",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                outcomes.append(response.read())
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=post_raw) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # the requests are running on both replicas
    ray.kill(ray.get_actor(sorted(before)[0], namespace="serve"))
    deadline = time.monotonic() + 90
    while True:
        states, now = replicas("futurefill")
        if states == {"RUNNING": 2} and len(now) == 2 and now - before:
            break
        assert time.monotonic() < deadline, (states, now, before)
        time.sleep(0.25)
    assert sorted(before)[0] not in now
    for thread in threads:
        thread.join(120)
    assert len(outcomes) == 4  # every request in flight ended: whole, or cut with its replica
    for outcome in outcomes:
        assert isinstance(outcome, (http.client.HTTPException, OSError)) or outcome.endswith(
            b"data: [DONE]\n\n"
        ), outcome
    openai = pytest.importorskip("openai")
    client = openai_client(openai, two_replicas)
    for i, prompt in enumerate(["import sys", "while True:", "if x:", "return"]):
        done = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, seed=i)
        assert done.choices[0].text == alone(model, prompt, 10, temperature=1.0, seed=i)


@pytest.fixture(scope="module")
def keyed(cluster):
    """A second application with an API key, under a route prefix: one replica of 1 slot."""
    from ray import serve

    from futurefill.serving.ray_serve import build_app

    args = {"slots": 1, "num_replicas": 1, "api_key": KEY, "num_cpus": 0.5}
    with bounded(120, "deploying the keyed application"):
        serve.run(build_app(args), name="keyed", route_prefix="/keyed")
    return cluster + "/keyed"


def test_only_requests_with_the_key_reach_a_slot(keyed):
    openai = pytest.importorskip("openai")
    before = metric(keyed, "futurefill_generated_tokens_total")
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"X-API-Key": KEY},
        {"Api-Key": KEY},
    ):
        for path, payload in [("/v1/completions", body), ("/tokenize", {"prompt": "x"})]:
            code, reply, reply_headers = post(keyed + path, payload, headers)
            assert code == 401, (path, headers)
            assert reply["error"]["code"] == "invalid_api_key"
            assert reply_headers.get("www-authenticate") == "Bearer"
        assert get(keyed + "/v1/models", headers)[0] == 401
    assert metric(keyed, "futurefill_generated_tokens_total") == before  # no slot reached
    assert get(keyed + "/health")[0] == 200
    client = openai_client(openai, keyed, KEY)
    done = client.completions.create(model=MODEL, prompt="x", max_tokens=2, temperature=0)
    assert len(done.choices[0].text) >= 1
    with pytest.raises(openai.AuthenticationError):
        openai_client(openai, keyed, "nope").models.list()
