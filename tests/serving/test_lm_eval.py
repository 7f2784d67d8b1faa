"""lm-evaluation-harness (``lm_eval``) against ``futurefill serve``, offline: its
``local-completions`` model on 127.0.0.1 with the server's own tokenizer (``/tokenizer_info``,
``/tokenize``) and token-id prompts, batches of 4, on tiny local tasks (JSONL data, YAML configs
written here) of each kind: loglikelihood, multiple_choice, generate_until and
loglikelihood_rolling (one document longer than a window). Every log-likelihood lm_eval logs is
the model's own (its forward over context and continuation in float64, the continuation's
log-probabilities summed), every is_greedy flag is the model's argmax, every generation is what
greedy generate() gives the prompt alone, cut at the first stop string.

lm_eval asks a loglikelihood as ``echo`` = true, ``logprobs`` = 1, ``max_tokens`` = 1 and reads
``choices[i].logprobs.token_logprobs[ctxlen:-1]`` (the last entry, the generated token's, is
dropped), ``top_logprobs`` the same way for is_greedy (the token's log-probability equal to the
largest of its position's, compared exactly); the bundled byte tokenizer has neither BOS nor
EOS, so the prefix of an empty context and of a rolling document is ``custom_prefix_token_id``
(a newline, what separates the corpus's topics).
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from futurefill import generate, load_pretrained
from futurefill.demo.data import decode, encode, load_corpus

lm_eval = pytest.importorskip("lm_eval")
yaml = pytest.importorskip("yaml")
for _module in ("aiohttp", "requests", "tenacity"):  # lm-eval's [api] extra
    pytest.importorskip(_module)
lm_eval_utils = pytest.importorskip("lm_eval.utils")
if not hasattr(lm_eval_utils, "RemoteTokenizer"):
    pytest.skip("lm-eval too old: tokenizer_backend=remote needs 0.4.9.2", allow_module_level=True)

MODEL = "futurefill-pydoc-stu"
PREFIX = 10  # "\n": the prefix token of an empty context (the byte tokenizer has no BOS/EOS)
MAX_LENGTH = 2048  # lm_eval's default max_length, the bundled model's max_len
MAX_GEN_TOKS = 16
UNTIL = ["\n", ".", " a "]  # none inside another: the first to end is the first to start
TASKS = ["ff_loglikelihood", "ff_multiple_choice", "ff_generate_until", "ff_rolling"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model():
    return load_pretrained()


@pytest.fixture(scope="module")
def model64():
    return load_pretrained().double()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``futurefill serve`` (the bundled model, 4 slots) on a free loopback port: its base URL.
    Stopped with SIGTERM at the end, which it must survive with status 0."""
    port = free_port()
    command = [sys.executable, "-m", "futurefill.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--slots", "4"]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"futurefill serve exited with {process.returncode}:\n{log.read_text()}"
                )
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"futurefill serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, log.read_text()


def greedy(model, prompt: str, n: int) -> str:
    """What greedy generate() gives ``prompt`` alone: ``n`` tokens, as text."""
    return decode(generate(model, encode(prompt)[None], n)[0])


def cut(text: str, until: list[str]) -> str:
    return text[: min((i for s in until if (i := text.find(s)) >= 0), default=len(text))]


def documents(model) -> dict[str, list[dict]]:
    """The tasks' documents: short strings, multi-byte characters, an empty context, a context
    ending in whitespace (lm_eval moves it into the continuation), continuations the model
    would generate greedily (is_greedy true) and others, a rolling document of two windows."""
    greedy_with = greedy(model, "The with statement", 5)
    greedy_import = greedy(model, "import", 3)
    long = load_corpus()[:2100].decode("utf-8", errors="ignore")  # > 2046 tokens: 2 windows
    return {
        "ff_loglikelihood": [
            {"context": "The with statement", "target": greedy_with},
            {"context": "The with statement", "target": " is used"},
            {"context": "import", "target": greedy_import},
            {"context": "x = [", "target": "1, 2]"},
            {"context": "", "target": "Lambda"},
            {"context": "def f(x):\n    ", "target": "return x"},
            {"context": "Ein naïve", "target": " café ü"},
        ],
        "ff_multiple_choice": [
            {
                "question": "Which keyword defines a function?",
                "choices": ["def", "class"],
                "gold": 0,
            },
            {"question": "The with statement", "choices": ["is", "was", "é"], "gold": 1},
            {"question": "import", "choices": ["os", "sys", "the"], "gold": 2},
        ],
        "ff_generate_until": [
            {"prompt": "def f(x):", "answer": ""},
            {"prompt": "The with statement", "answer": " is"},
            {"prompt": "The try statement", "answer": ""},
            {"prompt": "x = [", "answer": ""},
            {"prompt": "Lambda expressions", "answer": ""},
        ],
        "ff_rolling": [
            {"text": "The try statement specifies exception handlers."},
            {"text": "naïve café — ü"},
            {"text": long},
        ],
    }


def write_tasks(directory: Path, docs: dict[str, list[dict]]) -> None:
    """A JSONL file and a YAML config per task in ``directory``; datasets' cache in it too."""
    common = {"test_split": "test", "metadata": {"version": 1.0}}
    configs = {
        "ff_loglikelihood": {
            "output_type": "loglikelihood",
            "doc_to_text": "{{context}}",
            "doc_to_target": "{{target}}",
            "metric_list": [{"metric": "acc"}, {"metric": "perplexity"}],
        },
        "ff_multiple_choice": {
            "output_type": "multiple_choice",
            "doc_to_text": "{{question}}",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        },
        "ff_generate_until": {
            "output_type": "generate_until",
            "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {
                "until": UNTIL,
                "max_gen_toks": MAX_GEN_TOKS,
                "do_sample": False,
                "temperature": 0.0,
            },
            "metric_list": [{"metric": "exact_match"}],
        },
        "ff_rolling": {
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [
                {"metric": "word_perplexity"},
                {"metric": "byte_perplexity"},
                {"metric": "bits_per_byte"},
            ],
        },
    }
    for task, config in configs.items():
        data = directory / f"{task}.jsonl"
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs[task]), encoding="utf-8")
        dataset = {
            "dataset_path": "json",
            "dataset_kwargs": {
                "data_files": {"test": str(data)},
                "cache_dir": str(directory / "hf-datasets"),
            },
        }
        text = yaml.safe_dump({"task": task, **dataset, **common, **config}, allow_unicode=True)
        (directory / f"{task}.yaml").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def evaluation(server, model, tmp_path_factory):
    """lm_eval's simple_evaluate over the four tasks, offline: (its results, the documents)."""
    directory = tmp_path_factory.mktemp("lm_eval_tasks")
    docs = documents(model)
    write_tasks(directory, docs)
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
            patch.setenv(name, "1")
        patch.setenv("HF_HOME", str(directory / "hf-home"))
        patch.setenv("NO_PROXY", "127.0.0.1,localhost")
        patch.setenv("no_proxy", "127.0.0.1,localhost")
        import datasets.config  # read the environment when first imported: set them here too
        import huggingface_hub.constants

        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        from lm_eval.tasks import TaskManager

        results = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={
                "base_url": server + "/v1/completions",
                "model": MODEL,
                "tokenizer_backend": "remote",
                "tokenized_requests": True,
                "custom_prefix_token_id": PREFIX,
                "max_length": MAX_LENGTH,
                "max_retries": 1,  # a refused request fails the test at once
            },
            tasks=TASKS,
            batch_size=4,
            task_manager=TaskManager(include_path=str(directory), include_defaults=False),
            log_samples=True,
            bootstrap_iters=0,
        )
    assert results is not None
    return results, docs


def log_probabilities(model64, ids: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits over ``ids`` in float64: row i scores ids[i + 1]."""
    with torch.no_grad():
        out = model64(torch.tensor([ids]))
    return torch.log_softmax(getattr(out, "logits", out)[0].double(), -1)


def score(model64, context: list[int], continuation: list[int]) -> tuple[float, bool | None]:
    """The continuation's log-likelihood after the context, and whether each of its tokens is
    the argmax (None where the top two are within float32's reach of a tie)."""
    rows = log_probabilities(model64, context + continuation)[len(context) - 1 : -1]
    target = torch.tensor(continuation)
    top = rows.topk(2, dim=-1)
    is_greedy = bool((top.indices[:, 0] == target).all())
    margin = (top.values[:, 0] - top.values[:, 1]).min().item()
    total = rows.gather(-1, target[:, None]).sum().item()
    return total, is_greedy if margin > 1e-4 else None


def encode_pair(context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm_eval's split of a request into tokens (TemplateLM.loglikelihood, _encode_pair): an
    empty context is the prefix token; a context's trailing whitespace goes to the
    continuation."""
    if not context:
        ids = list(continuation.encode())
        return ([PREFIX], ids) if ids[0] != PREFIX else (ids[:1], ids[1:])
    stripped = context.rstrip()
    return list(stripped.encode()), list((context[len(stripped) :] + continuation).encode())


def near(got: float, want: float, tokens: int) -> bool:
    """Equal up to float32 rounding: the server's are float32 log-probabilities (each ~1e-6
    from float64's on this model), summed over ``tokens`` tokens."""
    return math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-4 * max(1, tokens) ** 0.5)


def check_loglikelihoods(model64, sample: dict) -> list[tuple[float, bool]]:
    """Each (context, continuation) request of a sample against the model: the pairs."""
    pairs = []
    for (context, continuation), response in zip(sample["arguments"], sample["resps"], strict=True):
        got, got_greedy = response[0]
        context_ids, continuation_ids = encode_pair(context, continuation)
        want, want_greedy = score(model64, context_ids, continuation_ids)
        assert near(got, want, len(continuation_ids)), (context, continuation, got, want)
        if want_greedy is not None:
            assert got_greedy == want_greedy, (context, continuation)
        pairs.append((got, got_greedy))
    return pairs


def test_loglikelihoods_are_the_models(evaluation, model64):
    results, docs = evaluation
    samples = sorted(results["samples"]["ff_loglikelihood"], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs["ff_loglikelihood"])
    flags = []
    for sample in samples:
        doc = docs["ff_loglikelihood"][sample["doc_id"]]
        assert [tuple(a) for a in sample["arguments"]] == [(doc["context"], doc["target"])]
        ((got, got_greedy),) = check_loglikelihoods(model64, sample)
        assert tuple(sample["filtered_resps"][0]) == (got, got_greedy)
        flags.append(got_greedy)
    assert flags[0] and flags[2]  # the model's own greedy continuations
    assert not flags[1]
    assert results["results"]["ff_loglikelihood"]["acc,none"] == pytest.approx(
        sum(flags) / len(flags)
    )


def test_multiple_choice_scores_each_choice_as_the_model_does(evaluation, model64):
    results, docs = evaluation
    samples = sorted(results["samples"]["ff_multiple_choice"], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs["ff_multiple_choice"])
    correct = []
    for sample in samples:
        doc = docs["ff_multiple_choice"][sample["doc_id"]]
        assert [tuple(a) for a in sample["arguments"]] == [
            (doc["question"], " " + choice) for choice in doc["choices"]
        ]
        lls = [ll for ll, _ in check_loglikelihoods(model64, sample)]
        correct.append(max(range(len(lls)), key=lls.__getitem__) == doc["gold"])
    assert results["results"]["ff_multiple_choice"]["acc,none"] == pytest.approx(
        sum(correct) / len(correct)
    )


def test_generations_are_greedy_generate_cut_at_the_stop_strings(evaluation, model):
    results, docs = evaluation
    samples = sorted(results["samples"]["ff_generate_until"], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs["ff_generate_until"])
    for sample in samples:
        prompt = docs["ff_generate_until"][sample["doc_id"]]["prompt"]
        ((context, kwargs),) = sample["arguments"]
        assert context == prompt and kwargs["until"] == UNTIL
        want = cut(greedy(model, prompt, MAX_GEN_TOKS), UNTIL)
        assert sample["resps"] == [[want]], prompt
        assert sample["filtered_resps"] == [want]
    assert "exact_match,none" in results["results"]["ff_generate_until"]


def test_rolling_loglikelihoods_sum_the_documents_token_logprobs(evaluation, model64):
    """One window (the prefix, then every token scored) for a short document; a long one in
    lm_eval's disjoint windows of max_length - 2 predicted tokens, the first after the prefix,
    the next after the tokens before it (2047 tokens and 1 generated: the model's max_len)."""
    results, docs = evaluation
    samples = sorted(results["samples"]["ff_rolling"], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs["ff_rolling"])
    total, nbytes = 0.0, 0
    for sample in samples:
        text = docs["ff_rolling"][sample["doc_id"]]["text"]
        assert [tuple(a) for a in sample["arguments"]] == [(text,)]
        ((got,),) = sample["resps"]
        ids = list(text.encode())
        window = MAX_LENGTH - 2
        if len(ids) <= window:
            want = score(model64, [PREFIX], ids)[0]
        else:
            assert len(ids) <= 2 * window
            first = score(model64, [PREFIX], ids[:window])[0]
            start = len(ids) - window - 1  # the second window: the last 2047 tokens
            second = score(model64, ids[start:window], ids[window:])[0]
            want = first + second
        assert near(got, want, len(ids)), (text[:40], got, want)
        total, nbytes = total + got, nbytes + len(ids)
    bits = results["results"]["ff_rolling"]["bits_per_byte,none"]
    assert bits == pytest.approx(-total / nbytes / math.log(2), rel=1e-9)
