"""Server benchmark (issue 6): MiniLM sentence-similarity over loopback HTTP with 1, 4 and 16 concurrent clients,
against in-process query(), in one run.

Run: python benchmarks/bench_server.py    (writes benchmarks/results/server.json)
     python benchmarks/bench_server.py --quick    (20 requests: proves it runs, times nothing)

Every request sets use_cache false, so each one computes; requests per second and p50/p95 latency. Every HTTP
answer is asserted equal to the in-process answer to the same request before the figures are reported.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checks import QUICK, assert_same, results_name  # noqa: E402
from common import save  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
REQUESTS = 20 if QUICK else 400
CLIENTS = (1, 4) if QUICK else (1, 4, 16)


def payload(i: int) -> dict:
    return {
        "inputs": {
            "source_sentence": f"That is a happy person number {i}",
            "sentences": ["That is a happy dog", "That is a very happy person", "Today is a sunny day"],
        },
        "options": {"use_cache": False, "wait_for_model": True},
    }


def measure(call, clients: int) -> tuple[dict, list]:
    """The figures of REQUESTS calls from `clients` threads, and the answers, in request order."""
    latencies: list[float] = []

    def one(i: int):
        started = time.perf_counter()
        answer = call(i)
        latencies.append(time.perf_counter() - started)
        return answer

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, range(REQUESTS)))
    wall = time.perf_counter() - started
    latencies.sort()
    return answers, {
        "requests_per_s": round(REQUESTS / wall, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2),
        "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1e3, 2),
    }


def main() -> None:
    import requests

    from localinfer import LocalInference

    home = Path(tempfile.mkdtemp(prefix="localinfer-bench-server-"))
    engine = LocalInference(home=home)
    engine.preload(MINILM)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "localinfer", "--home", str(home), "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/models/{MINILM}"
    session = requests.Session()

    def over_http(i: int):
        response = requests.post(url, json=payload(i), timeout=60)
        response.raise_for_status()
        return response.json()

    try:
        for _ in range(600):
            try:
                if session.post(url, json=payload(0), timeout=60).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        results: dict = {"requests": REQUESTS}
        for clients in CLIENTS:
            http_answers, http = measure(over_http, clients)
            answers, in_process = measure(lambda i: engine.query(MINILM, payload(i)), clients)
            assert_same(http_answers, answers, f"HTTP against in-process, {clients} clients")
            results[f"clients_{clients}"] = {"http": http, "in_process": in_process}
            print(clients, json.dumps(results[f"clients_{clients}"]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    path = save(results_name("server"), results)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
