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
import threading
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


# -- issue 14: requests batched across clients -----------------------------------------------------------------------
# Run: python benchmarks/bench_server.py --batching    (writes benchmarks/results/server-batching.json)
#      python benchmarks/bench_server.py --batching --quick    (proves it runs; its timings mean little)
#
# MiniLM feature-extraction, one sentence per request (use_cache false), from 1, 4, 16 and 64 concurrent clients over
# HTTP (a keep-alive session per client): requests per second and p50/p95 latency, on a server that batches (its
# defaults) and on one that runs every request alone (--max-batch-size 0). The ceiling, in the same run: the same
# sentences in-process as list inputs of 32. Targets: at 16 clients at least 0.5 of the ceiling's rate; at 1 client a
# p50 within 1 ms of the unbatched server's. Every HTTP answer is checked against the in-process one (1e-6).

BATCHING_CLIENTS = (1, 4) if QUICK else (1, 4, 16, 64)
BATCHING_REQUESTS = 64 if QUICK else 640
# `--max-batch-wait-ms X` is handed to the batching server (default: the server's own default).
BATCHING_FLAGS = sys.argv[sys.argv.index("--max-batch-wait-ms") :][:2] if "--max-batch-wait-ms" in sys.argv else []


def _batching_server(home: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """A `localinfer serve` on a free port with `flags`, MiniLM loaded: the process and MiniLM's feature-extraction
    URL."""
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "localinfer", "--home", str(home), "serve", "--port", str(port), "--no-preload", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/pipeline/feature-extraction/{MINILM}"
    for _ in range(600):
        try:
            warm_up = {"inputs": "warm up", "options": {"use_cache": False, "wait_for_model": True}}  # loads it
            if requests.post(url, json=warm_up, timeout=120).ok:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("the server did not start")


def _clients(url: str, sentences: list[str], clients: int) -> tuple[list, list[float], float]:
    """Each sentence posted once, from `clients` threads each with its own keep-alive session: the answers in order,
    the latencies, and the wall time."""
    import requests

    local = threading.local()

    def one(sentence: str) -> tuple[object, float]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        started = time.perf_counter()
        response = local.session.post(url, json={"inputs": sentence, "options": {"use_cache": False}}, timeout=120)
        assert response.status_code == 200, response.text
        return response.json(), time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(one, sentences))
    return [answer for answer, _ in done], [seconds for _, seconds in done], time.perf_counter() - started


def _figures(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    return {
        "requests_per_s": round(len(ordered) / wall, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1e3, 2),
        "p95_ms": round(ordered[int(len(ordered) * 0.95)] * 1e3, 2),
    }


def batching() -> None:
    import numpy as np
    from common import short_sentences

    from localinfer import LocalInference

    home = Path(tempfile.mkdtemp(prefix="localinfer-bench-batching-"))
    engine = LocalInference(home=home)
    engine.preload(MINILM, task="feature-extraction")  # exported once, before the servers start
    sentences = short_sentences(BATCHING_REQUESTS)

    def in_process() -> list:
        payloads = [
            {"inputs": sentences[i : i + 32], "options": {"use_cache": False}} for i in range(0, len(sentences), 32)
        ]
        return [vector for p in payloads for vector in engine.query(MINILM, p, task="feature-extraction")]

    def ceiling_rate() -> tuple[list, float]:
        started = time.perf_counter()
        answers = in_process()
        return answers, len(sentences) / (time.perf_counter() - started)

    in_process()  # warm-up
    expected, before = ceiling_rate()
    expected = np.array(expected)
    results: dict = {"requests": BATCHING_REQUESTS, "batching_server_flags": BATCHING_FLAGS}
    print("in-process, lists of 32:", round(before, 1), "sentences/s", flush=True)
    servers = {
        "batched": _batching_server(home, *BATCHING_FLAGS),
        "unbatched": _batching_server(home, "--max-batch-size", "0"),
    }
    largest_difference = 0.0
    try:
        for clients in BATCHING_CLIENTS:
            row = {}
            for name, (_, url) in servers.items():
                _clients(url, sentences[: 4 * clients], clients)  # warm-up: each client's session connected
                answers, latencies, wall = _clients(url, sentences, clients)
                assert_same(answers, expected, f"{name} server, {clients} clients, against in-process", tol=1e-6)
                largest_difference = max(largest_difference, float(np.abs(np.array(answers) - expected).max()))
                row[name] = _figures(latencies, wall)
            results[f"clients_{clients}"] = row
            print(clients, json.dumps(row), flush=True)
        # One client, the two servers alternately (four rounds each), so that drift in the machine's load spreads over
        # both: the cost of batching to a lone client.
        lone: dict[str, list[float]] = {"batched": [], "unbatched": []}
        for _ in range(4):
            for name, (_, url) in servers.items():
                lone[name] += _clients(url, sentences[: len(sentences) // 4], 1)[1]
        p50 = {name: sorted(times)[len(times) // 2] * 1e3 for name, times in lone.items()}
        results["one_client_p50_ms"] = {
            **{name: round(value, 3) for name, value in p50.items()},
            "batched_minus_unbatched": round(p50["batched"] - p50["unbatched"], 3),
        }
        print("1 client p50:", json.dumps(results["one_client_p50_ms"]), flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)
    after = ceiling_rate()[1]
    ceiling = (before + after) / 2  # the ratios below use the mean of the ceiling measured before and after
    results["in_process_batch_32"] = {"sentences_per_s": round(ceiling, 1), "before": round(before, 1)}
    results["in_process_batch_32"]["after"] = round(after, 1)
    for clients in BATCHING_CLIENTS:
        for name in ("batched", "unbatched"):
            rate = results[f"clients_{clients}"][name]["requests_per_s"]
            results[f"clients_{clients}"][f"{name}_over_ceiling"] = round(rate / ceiling, 3)
    results["largest_difference_from_in_process"] = largest_difference
    print(json.dumps(results, indent=1), flush=True)
    results["targets"] = {
        "clients_16_at_least_half_the_ceiling": results.get("clients_16", {}).get("batched_over_ceiling", 0) >= 0.5,
        "one_client_p50_within_1_ms": results["one_client_p50_ms"]["batched_minus_unbatched"] <= 1.0,
    }
    path = save(results_name("server-batching"), results)
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
    elif "--batching" in sys.argv[1:]:
        batching()
    else:
        main()
