"""A ``futurefill serve`` subprocess for a benchmark: started on a free loopback port and waited
for (:func:`serve`), sent streaming completions requests timed from the client's side
(:meth:`Server.complete`), its ``/metrics`` and resident memory read, and stopped with SIGTERM
(no process is left behind, whatever happens in between).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Reply", "Server", "serve"]

START_TIMEOUT_S = 300.0  # loading the model and allocating the slots' state
STOP_TIMEOUT_S = 60.0  # uvicorn's graceful shutdown waits 10 s for requests in flight
REQUEST_TIMEOUT_S = 3600.0


@dataclasses.dataclass
class Reply:
    """A streamed completion as the client saw it: from sending the request to the first chunk
    with text (``first_token_s``) and to ``[DONE]`` (``seconds``); each choice's text and its
    tokens' log-probabilities (with ``logprobs`` in the request), by index; the usage."""

    first_token_s: float
    seconds: float
    texts: list[str]
    logprobs: list[list[float]]
    usage: dict[str, int]


class Server:
    """A running ``futurefill serve``: its process, its URL, the file its stderr goes to."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        import httpx

        self.process, self.url, self.log = process, url, log
        self.client = httpx.Client(timeout=REQUEST_TIMEOUT_S)
        self.exit_code: int | None = None

    def complete(self, body: dict[str, Any]) -> Reply:
        """POST ``body`` (``stream`` set) to ``/v1/completions`` and read every chunk; RuntimeError
        for a reply other than 200."""
        texts: dict[int, list[str]] = {}
        logprobs: dict[int, list[float]] = {}
        usage: dict[str, int] = {}
        clock, first = time.perf_counter, None
        sent = clock()
        with self.client.stream("POST", self.url + "/v1/completions", json=body) as reply:
            if reply.status_code != 200:
                reply.read()
                raise RuntimeError(f"futurefill serve answered {reply.status_code}: {reply.text}")
            for line in reply.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    break
                chunk = json.loads(line[6:])
                for choice in chunk["choices"]:
                    if choice["text"] and first is None:
                        first = clock()
                    texts.setdefault(choice["index"], []).append(choice["text"])
                    if choice.get("logprobs"):
                        scores = choice["logprobs"]["token_logprobs"]
                        logprobs.setdefault(choice["index"], []).extend(scores)
                usage = chunk.get("usage") or usage
        done = clock()
        if first is None:
            raise RuntimeError("futurefill serve sent no text")
        return Reply(
            first - sent,
            done - sent,
            ["".join(texts[i]) for i in sorted(texts)],
            [logprobs.get(i, []) for i in sorted(texts)],
            usage,
        )

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{'name{labels}': value}`` (the samples of the Prometheus text)."""
        reply = self.client.get(self.url + "/metrics")
        reply.raise_for_status()
        samples = {}
        for line in reply.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def resident_bytes(self) -> tuple[int | None, int | None]:
        """The process's resident size now and its high-water mark (Linux's VmRSS, VmHWM);
        None where ``/proc`` does not say."""
        fields: dict[str, int] = {}
        with contextlib.suppress(OSError), open(f"/proc/{self.process.pid}/status") as file:
            for line in file:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(rest.split()[0]) * 1024
        return fields.get("VmRSS"), fields.get("VmHWM")

    def stderr_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> int:
        """SIGTERM, then wait for the exit (SIGKILL past :data:`STOP_TIMEOUT_S`); its status."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.exit_code = self.process.returncode
        return self.exit_code


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(model: str | Path, options: Sequence[str] = ()) -> Iterator[Server]:
    """``python -m futurefill.cli serve --model MODEL --host 127.0.0.1 --port <free> *options``
    as a subprocess, once ``/health`` answers; stopped on leaving (:meth:`Server.stop`).
    RuntimeError, with the end of its stderr, when it exits or does not answer in time."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "futurefill.cli", "serve", "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), *options]
    with tempfile.TemporaryDirectory(prefix="futurefill-serve-") as tmp:
        log = Path(tmp) / "stderr.txt"
        with open(log, "wb") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        server = Server(process, f"http://127.0.0.1:{port}", log)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"futurefill serve exited with status {process.returncode}:\n"
                        + server.stderr_tail()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if server.client.get(server.url + "/health", timeout=5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"futurefill serve did not answer in {START_TIMEOUT_S:.0f} s:\n"
                        + server.stderr_tail()
                    )
                time.sleep(0.1)
            yield server
        finally:
            server.stop()
