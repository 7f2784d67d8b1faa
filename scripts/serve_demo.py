"""The end of ``make demo``: start ``futurefill serve`` on a free loopback port, send a few
concurrent requests with the openai client (streamed and not, greedy and seeded), print them,
and stop the server with SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI

PROMPTS = ["The with statement", "A generator function", "The import system", "class C:"]


def main() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "futurefill.cli", "serve", "--port", str(port), "--slots", "4"]
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        client = OpenAI(base_url=url + "/v1", api_key="not-needed")
        model = client.models.list().data[0].id

        def complete(i: int) -> str:
            prompt = PROMPTS[i]
            if i % 2:  # streamed, sampled with a seed
                chunks = client.completions.create(
                    model=model, prompt=prompt, max_tokens=60, temperature=0.8, seed=i, stream=True
                )
                return prompt + "".join(chunk.choices[0].text for chunk in chunks)
            reply = client.completions.create(
                model=model, prompt=prompt, max_tokens=60, temperature=0
            )
            return prompt + reply.choices[0].text

        start = time.perf_counter()
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            texts = list(pool.map(complete, range(len(PROMPTS))))
        seconds = time.perf_counter() - start
        for text in texts:
            print("---", text.replace("\n", " "))
        print(f"{len(PROMPTS)} concurrent requests served in {seconds:.2f} s by {model} at {url}")
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(60)
    print(f"futurefill serve stopped (exit status {code})")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
