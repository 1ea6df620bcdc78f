"""Server benchmark (issue 6): MiniLM sentence-similarity over loopback HTTP with 1, 4 and 16 concurrent clients,
against in-process query(), in one run.

Run: python benchmarks/bench_server.py    (writes benchmarks/results/server.json)

Every request sets use_cache false, so each one computes; requests per second and p50/p95 latency.
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
from common import save  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
REQUESTS = 400


def payload(i: int) -> dict:
    return {
        "inputs": {
            "source_sentence": f"That is a happy person number {i}",
            "sentences": ["That is a happy dog", "That is a very happy person", "Today is a sunny day"],
        },
        "options": {"use_cache": False, "wait_for_model": True},
    }


def measure(call, clients: int) -> dict:
    latencies: list[float] = []

    def one(i: int) -> None:
        started = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(REQUESTS)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {
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
    try:
        for _ in range(600):
            try:
                if session.post(url, json=payload(0), timeout=60).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        results: dict = {"requests": REQUESTS}
        for clients in (1, 4, 16):
            results[f"clients_{clients}"] = {
                "http": measure(lambda i: requests.post(url, json=payload(i), timeout=60).raise_for_status(), clients),
                "in_process": measure(lambda i: engine.query(MINILM, payload(i)), clients),
            }
            print(clients, json.dumps(results[f"clients_{clients}"]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    path = save("server", results)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
