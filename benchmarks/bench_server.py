"""Server benchmark (issue 6): MiniLM sentence-similarity over loopback HTTP with 1, 4 and 16 concurrent clients,
against in-process query(), in one run.

Run: python benchmarks/bench_server.py    (writes benchmarks/results/server.json)
     python benchmarks/bench_server.py --quick    (20 requests: proves it runs, times nothing)
     python benchmarks/bench_server.py --stream [--quick]    (streamed generation: see `stream_main`; writes
         benchmarks/results/server-stream.json)

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


# -- streamed generation (issue 13): time to first token and tokens per second over SSE, against in-process --------

STREAM_TOKENS = 16 if QUICK else 128
STREAM_RUNS = 2 if QUICK else 10
STREAM_PROMPT = "The quick brown fox jumps over the lazy dog because"


def _streaming_model(root: Path) -> Path:
    """A GPT-2-sized random model (bench_generation's size: 12 layers, 768 wide; tiny with --quick) without an eos
    token, so that every run generates exactly STREAM_TOKENS tokens on both sides."""
    import torch
    from bench_generation import GPT2_SIZE
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    from tests.fixtures.tiny_models import _gpt2_tokenizer

    torch.manual_seed(0)
    folder = root / "gpt2"
    tok = _gpt2_tokenizer(folder, 1024)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=None, **GPT2_SIZE)
    )
    model.generation_config = GenerationConfig(pad_token_id=tok.eos_token_id)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _timed_stream(pieces) -> tuple[float, float, list]:
    """Seconds to the first item and to the last of an iterator (started just before it is created), its items."""
    started = time.perf_counter()
    items, first = [], None
    for item in pieces():
        if first is None:
            first = time.perf_counter() - started
        items.append(item)
    return first or 0.0, time.perf_counter() - started, items


def stream_main() -> None:
    """Greedy text generation of STREAM_TOKENS tokens, STREAM_RUNS times: the TGI stream (`"stream": true`,
    server-sent events read line by line with requests, as InferenceClient reads them) from `localinfer serve` on
    loopback, against `localinfer.stream` in-process, alternated run by run on the same exports. Reports the median
    time to first token and tokens per second (after the first token: the decoding rate) of each. The joined event
    texts are asserted equal to the in-process pieces joined before any figure is reported."""
    import requests

    from localinfer import LocalInference

    root = Path(tempfile.mkdtemp(prefix="localinfer-bench-stream-"))
    folder = _streaming_model(root)
    model_id = "bench/gpt2"
    toml = root / "models.toml"
    toml.write_text(f'[models."{model_id}"]\npath = {json.dumps(str(folder))}\ntask = "text-generation"\n')
    home = root / "home"
    engine = LocalInference(toml, home)
    engine.preload(model_id)  # exports once; the server loads the same export
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "localinfer", "--models", str(toml), "--home", str(home), "serve", "--port", str(port)]
        + ["--no-preload"],
        stdout=subprocess.DEVNULL,
        stderr=open(root / "server.log", "w"),  # noqa: SIM115
    )
    url = f"http://127.0.0.1:{port}/models/{model_id}"
    parameters = {"do_sample": False, "max_new_tokens": STREAM_TOKENS}
    payload = {"inputs": STREAM_PROMPT, "parameters": parameters}
    session = requests.Session()

    def events():
        body = {**payload, "stream": True, "options": {"wait_for_model": True}}
        with session.post(url, json=body, stream=True, timeout=600) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith(b"data:"):
                    yield json.loads(line[5:])

    try:
        for _ in range(600):
            try:
                if session.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        list(events()), list(engine.stream(model_id, payload))  # warm both sides
        runs: dict[str, list] = {"sse": [], "in_process": []}
        for _ in range(STREAM_RUNS):
            first, total, received = _timed_stream(events)
            assert len(received) == STREAM_TOKENS and received[-1]["generated_text"] is not None
            runs["sse"].append((first, total, "".join(e["token"]["text"] for e in received)))
            first, total, pieces = _timed_stream(lambda: engine.stream(model_id, payload))
            runs["in_process"].append((first, total, "".join(pieces)))
        assert_same([r[2] for r in runs["sse"]], [r[2] for r in runs["in_process"]], "SSE against in-process")

        def figures(measured: list) -> dict:
            firsts = sorted(r[0] for r in measured)
            rates = sorted((STREAM_TOKENS - 1) / (r[1] - r[0]) for r in measured)
            return {
                "ttft_ms": round(firsts[len(firsts) // 2] * 1e3, 2),
                "tokens_per_s": round(rates[len(rates) // 2], 1),
            }

        results = {
            "model": f"random GPT-2, {_size_note()}",
            "new_tokens": STREAM_TOKENS,
            "runs": STREAM_RUNS,
            "sse": figures(runs["sse"]),
            "in_process": figures(runs["in_process"]),
        }
        print(json.dumps(results), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    path = save(results_name("server-stream"), results)
    print(f"written to {path}")


def _size_note() -> str:
    from bench_generation import GPT2_SIZE

    return ", ".join(f"{k} {v}" for k, v in GPT2_SIZE.items())


if __name__ == "__main__":
    if "--stream" in sys.argv[1:]:
        stream_main()
    else:
        main()
