"""localinfer.testing: the hosted API answered in-process, for code that calls it with requests, httpx or
InferenceClient, with no server and no socket; and the pytest plugin's `localinfer_api` fixture."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import entry_points
from pathlib import Path

import httpx
import orjson
import pytest
import requests
from huggingface_hub import InferenceClient
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError
from huggingface_hub.utils import get_session

from localinfer import LocalInference
from localinfer.testing import NetworkRefusedError, intercept
from tests.conftest import assert_close
from tests.fixtures.inference_client_calls import client_calls, to_json
from tests.fixtures.tiny_models import write_models_toml

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = Path(__file__).parent / "samples"
API = "https://api-inference.huggingface.co"
ROUTER = "https://router.huggingface.co/hf-inference"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SENTIMENT = "tiny/distilbert-sentiment"
HEADERS = {"Authorization": "Bearer hf_x"}


@pytest.fixture(scope="module")
def toml(tiny, tmp_path_factory) -> Path:
    return write_models_toml(tmp_path_factory.mktemp("testing") / "models.toml", tiny)


@pytest.fixture(scope="module")
def local(toml, home) -> LocalInference:
    """The engine the interceptor answers from (the session's exports)."""
    return LocalInference(toml, home)


@pytest.fixture(scope="module")
def fresh(toml, home, tmp_path_factory) -> LocalInference:
    """The expected side: its own result cache, so it never reads an answer the intercepted engine cached; the
    session's ONNX exports (a symlink), which tests/tasks check against the pipelines."""
    own = tmp_path_factory.mktemp("fresh-home")
    (home / "exports").mkdir(parents=True, exist_ok=True)
    (own / "exports").symlink_to(home / "exports", target_is_directory=True)
    return LocalInference(toml, own)


@pytest.fixture
def no_socket(monkeypatch):
    """Any connection attempt fails the test: what is answered here is answered without a socket."""

    def refuse(self, address):
        raise AssertionError(f"a socket connected to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


CONTRACT_EXAMPLES = [
    (SENTIMENT, {"inputs": "I like you. I love you"}, "Today is a sunny day"),
    ("tiny/bert-mlm", {"inputs": "The answer to the universe is [MASK]."}, "That is a [MASK] person."),
    (
        MINILM,
        {
            "inputs": {
                "source_sentence": "That is a happy person",
                "sentences": ["That is a happy dog", "That is a very happy person", "Today is a sunny day"],
            }
        },
        {"source_sentence": "Today is a sunny day", "sentences": ["That is a happy dog"]},
    ),
]


@pytest.mark.parametrize(("model_id", "payload", "other"), CONTRACT_EXAMPLES, ids=[m for m, _, _ in CONTRACT_EXAMPLES])
def test_contract_examples_with_requests(local, fresh, no_socket, model_id, payload, other):
    with intercept(local) as api:
        response = requests.post(f"{API}/models/{model_id}", headers=HEADERS, json=payload, timeout=60)
        changed = requests.post(f"{API}/models/{model_id}", headers=HEADERS, json={"inputs": other}, timeout=60)
    assert response.status_code == 200, response.text
    expected = fresh.query(model_id, payload)
    assert_close(response.json(), expected, 1e-5)
    assert not _same(changed.json(), expected), "the answer does not depend on the input: the comparison is blind"
    assert response.headers["content-type"] == "application/json"
    assert float(response.headers["x-compute-time"]) >= 0
    assert response.headers["x-compute-type"] in {"cpu", "cpu+optimized"}
    assert response.headers["x-compute-characters"] == str(_characters(payload["inputs"]))
    assert response.headers["x-cache"] in {"hit", "miss"}
    call = api.calls[0]
    assert (call.model, call.task, call.status, call.payload) == (
        model_id,
        local.resolve(model_id)[1].name,
        200,
        payload,
    )


def test_minilm_answers_its_published_numbers(local, no_socket):
    payload = CONTRACT_EXAMPLES[2][1]
    with intercept(local):
        response = requests.post(f"{API}/models/{MINILM}", headers=HEADERS, json=payload, timeout=60)
    assert_close(response.json(), [0.6945773363113403, 0.9429150819778442, 0.2568760812282562], 1e-5)


@pytest.mark.parametrize(
    ("model_id", "sample", "other"),
    [("tiny/vit", "plane.jpg", "plane2.jpg"), ("tiny/wav2vec2-ctc", "sample1.flac", "sample1_dual.ogg")],
)
def test_media_bodies(local, fresh, no_socket, model_id, sample, other):
    data = (SAMPLES / sample).read_bytes()
    with intercept(local) as api:
        response = requests.post(f"{API}/models/{model_id}", headers=HEADERS, data=data, timeout=60)
        changed = requests.post(f"{API}/models/{model_id}", data=(SAMPLES / other).read_bytes(), timeout=60)
    assert response.status_code == 200, response.text
    expected = fresh.query(model_id, data)
    assert_close(response.json(), expected, 1e-5)
    assert not _same(changed.json(), expected)
    if sample.endswith(".jpg"):
        assert response.headers["x-compute-images"] == "1"
    else:
        assert abs(float(response.headers["x-compute-audio-length"]) - 13.69) < 0.05
    assert api.calls[0].payload == data


def test_every_route_and_the_option_headers(local, no_socket):
    payload = {"inputs": {"source_sentence": "a happy dog", "sentences": ["a sad cat", "a happy puppy"]}}
    urls = [
        f"{API}/models/{MINILM}",
        f"{API}/pipeline/sentence-similarity/{MINILM}",
        f"{API}/models/{MINILM}/pipeline/sentence-similarity",
        f"{ROUTER}/models/{MINILM}",
        f"{ROUTER}/models/{MINILM}/pipeline/sentence-similarity",
    ]
    with intercept(local) as api, requests.Session() as session:  # a session of the application's own
        answers = [session.post(url, json=payload, timeout=60) for url in urls]
        uncached = requests.post(urls[0], json=payload, headers={"x-use-cache": "false"}, timeout=60)
        features = requests.post(f"{API}/models/{MINILM}/pipeline/feature-extraction", json={"inputs": "a"})
    assert all(a.status_code == 200 and a.json() == answers[0].json() for a in answers)
    assert answers[-1].headers["x-cache"] == "hit" and uncached.headers["x-cache"] == "miss"
    assert len(features.json()) == 384 and api.calls[-1].task == "feature-extraction"
    assert [c.url for c in api.calls[: len(urls)]] == urls


CLIENT_CALLS = client_calls(SAMPLES)


@pytest.mark.parametrize("method", CLIENT_CALLS)
def test_inference_client_by_bare_model_id(local, fresh, no_socket, method):
    """Each task method of InferenceClient(model="<id>"), as an application calls the hosted API: the client asks
    the Hub which provider serves the model and for which task, then posts to the router; all answered here."""
    call = CLIENT_CALLS[method]
    assert "HF_HUB_OFFLINE" in os.environ and hub_constants.HF_HUB_OFFLINE  # set, as localinfer sets it
    with intercept(local) as api:
        result = call.call(InferenceClient(model=call.model, headers={"x-wait-for-model": "true"}))
    expected = to_json(call.shape(fresh.query(call.model, call.payload)))
    assert_close(to_json(result), expected, 1e-5, method)
    assert [(c.model, c.status) for c in api.calls] == [(call.model, 200)]
    assert api.calls[0].url.startswith(f"{ROUTER}/models/{call.model}")


def test_inference_client_with_the_model_per_call(local, fresh, no_socket):
    with intercept(local) as api:
        by_call = InferenceClient().text_classification("I like you", model=SENTIMENT, top_k=2)
        with_token = InferenceClient(token="hf_x").fill_mask("That is a [MASK] person.", model="tiny/bert-mlm")
        # MiniLM's own task is sentence-similarity: the client names the other one in the route
        features = InferenceClient().feature_extraction("a happy dog", model=MINILM)
    assert_close(to_json(by_call), fresh.query(SENTIMENT, {"inputs": "I like you", "parameters": {"top_k": 2}})[0])
    expected = fresh.query(MINILM, "a happy dog", task="feature-extraction")
    assert features.shape == (384,)
    assert_close(features.tolist(), expected, 1e-5)
    shape = CLIENT_CALLS["fill_mask"].shape  # as the client parses the JSON
    assert_close(to_json(with_token), to_json(shape(fresh.query("tiny/bert-mlm", "That is a [MASK] person."))))
    assert [c.task for c in api.calls] == ["text-classification", "fill-mask", "feature-extraction"]


def test_errors_are_the_servers(local, toml, tmp_path, no_socket):
    with intercept(local) as api:
        unknown = requests.post(f"{API}/models/nobody/nothing", json={"inputs": "x"}, timeout=60)
        bad = requests.post(f"{API}/models/{SENTIMENT}", json={"inputs": "x", "parameters": {"top_k": 0}})
        task = requests.post(f"{API}/pipeline/dancing/{SENTIMENT}", json={"inputs": "x"}, timeout=60)
        chat = requests.post(f"{ROUTER}/v1/chat/completions", json={"model": SENTIMENT, "messages": []}, timeout=60)
        with pytest.raises(RepositoryNotFoundError):  # the Hub lookup: the registry knows no such model
            InferenceClient(model="nobody/nothing").text_classification("x")
        with pytest.raises(HfHubHTTPError) as client_bad:
            InferenceClient(model=SENTIMENT).text_classification("x", top_k=0)
    assert unknown.status_code == 404 and "not found" in unknown.json()["error"]
    assert bad.status_code == 400 and "parameters.top_k" in bad.json()["error"]
    assert task.status_code == 400 and "unknown task" in task.json()["error"]
    # chat completions (issue 13): answered as the server answers them, a 400 in OpenAI's shape for no messages
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"
    assert client_bad.value.response.status_code == 400
    assert [(c.model, c.status) for c in api.calls] == [
        ("nobody/nothing", 404),
        (SENTIMENT, 400),
        (SENTIMENT, 400),
        (SENTIMENT, 400),  # the chat request names its model in the body
        (SENTIMENT, 400),
    ]

    loading = LocalInference(toml, tmp_path / "home", emulate_loading=True)
    with intercept(loading):
        first = requests.post(f"{API}/models/tiny/bert-base", json={"inputs": "a"}, timeout=60)
        waited = requests.post(f"{API}/models/tiny/bert-base", json={"inputs": "a"}, headers={"x-wait-for-model": "1"})
    assert first.status_code == 503 and first.json()["error"] == "Model tiny/bert-base is currently loading"
    assert first.json()["estimated_time"] > 0 and waited.status_code == 200
    loading.close()


def test_any_other_url_is_refused_without_a_connection(local, no_socket):
    refused = [
        "https://example.com/models/tiny/x",
        "http://api-inference.huggingface.co/models/tiny/x",  # not the hosted API's scheme
        "https://router.huggingface.co/together/v1/chat/completions",  # another provider
        "https://huggingface.co/tiny/bert-base/resolve/main/config.json",  # a download from the Hub
        "http://127.0.0.1:8000/models/tiny/x",
    ]
    with intercept(local) as api:
        for url in refused:
            with pytest.raises(NetworkRefusedError, match="refused POST " + url.replace(".", r"\.")):
                requests.post(url, json={"inputs": "x"}, timeout=5)
    assert api.refused == refused and api.calls == []
    assert issubclass(NetworkRefusedError, OfflineModeIsEnabled)  # huggingface_hub's own "no network" error


def test_the_socket_guard_would_see_a_connection(no_socket):
    """The guard above is live: outside the interceptor a request does reach socket.connect."""
    with pytest.raises(AssertionError, match="a socket connected"):
        requests.get("http://127.0.0.1:9/", timeout=5)


def test_leaves_huggingface_hub_offline_and_restores_requests(local):
    original = requests.Session.get_adapter
    with intercept(local):
        assert requests.Session.get_adapter is not original
        assert hub_constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
        with intercept(local) as inner:  # contexts nest: the innermost answers
            requests.post(f"{API}/models/{SENTIMENT}", json={"inputs": "a"}, timeout=60)
        assert len(inner.calls) == 1
    assert requests.Session.get_adapter is original
    with pytest.raises(OfflineModeIsEnabled, match="offline mode is enabled"):  # huggingface_hub's session again
        get_session().get(f"https://huggingface.co/api/models/{SENTIMENT}")


def test_decorator_and_threads(local, no_socket):
    @intercept(local)
    def classify_all(texts):  # the application's code, calling the API from worker threads
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda t: requests.post(f"{API}/models/{SENTIMENT}", json={"inputs": t}), texts))

    answers = classify_all([f"text number {i}" for i in range(8)])
    assert all(a.status_code == 200 for a in answers)
    assert requests.Session.get_adapter.__module__ == "requests.sessions"


def test_an_engine_from_a_models_file(toml, home, monkeypatch, no_socket):
    monkeypatch.setenv("LOCALINFER_HOME", str(home))
    with intercept(models=toml) as api:
        response = requests.post(f"{API}/models/{SENTIMENT}", json={"inputs": "I like you"}, timeout=60)
    assert response.status_code == 200 and api.engine.models_file == toml and api.engine.home == home


def test_answers_what_query_answers_through_the_server_code(local, fresh, no_socket):
    """One payload per task family the server answers: the interceptor's body is the engine's JSON."""
    payload = {"inputs": "My name is Sarah and I live in London"}
    with intercept(local):
        response = requests.post(f"{API}/models/tiny/bert-ner", json=payload, timeout=60)
    assert_close(response.json(), fresh.query("tiny/bert-ner", payload), 1e-5)


def test_httpx_clients_answer_the_contract_example(local, fresh, no_socket):
    """Every httpx.Client is answered: one made before the context, one with a transport of its own, and the module
    functions; the answer is the one `requests` gets, and the server's."""
    model_id, payload, other = CONTRACT_EXAMPLES[0]
    url = f"{API}/models/{model_id}"
    before = httpx.Client(headers=HEADERS)
    with intercept(local) as api, httpx.Client(transport=httpx.HTTPTransport(retries=1)) as own:
        response = before.post(url, json=payload, timeout=60)
        mounted = own.post(f"{ROUTER}/models/{model_id}", json=payload)
        changed = httpx.post(url, json={"inputs": other}, headers={"x-use-cache": "false"})
        with requests.Session() as session:
            by_requests = session.post(url, json=payload, headers={"x-use-cache": "false"})
    before.close()
    assert response.status_code == 200, response.text
    expected = fresh.query(model_id, payload)
    assert_close(response.json(), expected, 1e-5)
    assert not _same(changed.json(), expected), "the answer does not depend on the input: the comparison is blind"
    assert mounted.json() == response.json() == by_requests.json()
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["x-compute-characters"] == str(len(payload["inputs"]))
    assert response.headers["x-compute-type"] in {"cpu", "cpu+optimized"}
    assert mounted.headers["x-cache"] == "hit" and changed.headers["x-cache"] == "miss"  # the engine's result cache
    assert [(c.model, c.task, c.status, c.url) for c in api.calls[:3]] == [
        (model_id, "text-classification", 200, url),
        (model_id, "text-classification", 200, f"{ROUTER}/models/{model_id}"),
        (model_id, "text-classification", 200, url),
    ]
    assert api.calls[0].payload == payload and api.calls[0].content_type == "application/json"


def test_httpx_async_client(local, fresh, no_socket):
    """httpx.AsyncClient, made before the context and inside it, under asyncio.run: answers, an error status and a
    refusal, all without a socket."""
    model_id = "tiny/bert-mlm"
    payloads = [{"inputs": "The answer to the universe is [MASK]."}, {"inputs": "That is a [MASK] person."}]

    async def app(before: httpx.AsyncClient):  # the application's code
        async with before, httpx.AsyncClient(headers=HEADERS) as inside:
            answers = await asyncio.gather(*(inside.post(f"{API}/models/{model_id}", json=p) for p in payloads))
            bad = await before.post(f"{API}/models/{SENTIMENT}", json={"inputs": "x", "parameters": {"top_k": 0}})
            with pytest.raises(NetworkRefusedError, match="refused GET https://example.com/async"):
                await before.get("https://example.com/async")
        return answers, bad

    with intercept(local) as api:
        answers, bad = asyncio.run(app(httpx.AsyncClient()))
    for answer, payload in zip(answers, payloads, strict=True):
        assert answer.status_code == 200, answer.text
        assert_close(answer.json(), fresh.query(model_id, payload), 1e-5)
    assert not _same(answers[0].json(), answers[1].json())
    assert bad.status_code == 400 and "parameters.top_k" in bad.json()["error"]
    assert sorted((c.model, c.status) for c in api.calls) == [(model_id, 200), (model_id, 200), (SENTIMENT, 400)]
    assert api.refused == ["https://example.com/async"]


def test_httpx_errors_and_refusals(local, no_socket):
    refused = ["https://example.com/models/tiny/x", "http://api-inference.huggingface.co/models/tiny/x"]
    with intercept(local) as api, httpx.Client() as client:
        unknown = client.post(f"{API}/models/nobody/nothing", json={"inputs": "x"})
        wrong_method = client.get(f"{API}/models/{SENTIMENT}")
        info = client.get(f"https://huggingface.co/api/models/{SENTIMENT}")
        for url in refused:
            with pytest.raises(NetworkRefusedError, match="refused POST " + url.replace(".", r"\.")):
                client.post(url, json={"inputs": "x"})
        with pytest.raises(NetworkRefusedError, match="refused GET https://example.com/"):
            httpx.get("https://example.com/")
    assert unknown.status_code == 404 and "not found" in unknown.json()["error"]
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert info.status_code == 200 and info.json()["pipeline_tag"] == "text-classification"
    assert [(c.model, c.status) for c in api.calls] == [("nobody/nothing", 404)]  # a 405 answers no model
    assert api.refused == [*refused, "https://example.com/"]


def test_httpx_restored_and_the_socket_guard_sees_it(local, no_socket):
    """Outside the context httpx is httpx again: its request reaches socket.connect, which the guard refuses."""
    originals = (httpx.Client._transport_for_url, httpx.AsyncClient._transport_for_url)
    with intercept(local):
        assert httpx.Client._transport_for_url is not originals[0]
        with intercept(local) as inner:  # contexts nest: the innermost answers
            httpx.post(f"{API}/models/{SENTIMENT}", json={"inputs": "a"})
        assert len(inner.calls) == 1
    assert (httpx.Client._transport_for_url, httpx.AsyncClient._transport_for_url) == originals
    with pytest.raises(AssertionError, match="a socket connected"):
        httpx.get("http://127.0.0.1:9/", timeout=5)

    async def get():
        async with httpx.AsyncClient() as client:
            await client.get("http://127.0.0.1:9/", timeout=5)

    with pytest.raises((AssertionError, ExceptionGroup)) as guard:  # anyio groups its connection attempts' errors
        asyncio.run(get())
    assert "a socket connected" in str(guard.value) or guard.group_contains(AssertionError, match="a socket connected")


def test_without_httpx_requests_is_still_intercepted(tmp_path):
    """httpx is optional: where it cannot be imported, localinfer.testing imports and intercepts requests."""
    (tmp_path / "models.toml").write_text("")
    script = f"""
import sys
sys.modules["httpx"] = None  # import httpx raises ImportError
import pytest, requests
from localinfer import LocalInference
from localinfer import testing
assert testing.httpx is None and "LocalInferenceTransport" not in testing.__all__
with testing.intercept(LocalInference({str(tmp_path / "models.toml")!r}, {str(tmp_path / "home")!r})) as api:
    answer = requests.post("{API}/models/nobody/nothing", json={{"inputs": "x"}})
    with pytest.raises(testing.NetworkRefusedError):
        requests.get("https://example.com/")
assert answer.status_code == 404 and api.refused == ["https://example.com/"]
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr[-3000:]


PLUGIN_TESTS = """
import os
from pathlib import Path

import pytest
import requests

API = "https://api-inference.huggingface.co/models/"


def sentiment(text):  # an application function, as a user writes it
    response = requests.post(API + "tiny/sentiment", headers={"Authorization": "Bearer hf_x"}, json={"inputs": text})
    response.raise_for_status()
    return max(response.json()[0], key=lambda x: x["score"])["label"]


@pytest.mark.parametrize("text", ["I like you", "I hate you", "a sunny day", "a rainy day"])
def test_fixture(localinfer_api, text):
    assert sentiment(text) in {"POSITIVE", "NEGATIVE"}
    call = localinfer_api.calls[0]
    assert (call.model, call.task, call.payload, call.status) == (
        "tiny/sentiment", "text-classification", {"inputs": text}, 200
    )
    worker = os.environ.get("PYTEST_XDIST_WORKER", "none")
    (Path("{workers}") / f"{worker}.{os.getpid()}.{id(localinfer_api.engine)}").touch()


def test_fresh_engine_per_test(localinfer_api):
    assert localinfer_api.calls == []
    response = requests.post(API + "tiny/sentiment", json={"inputs": "I like you"})
    assert response.headers["x-cache"] == "miss"  # its own result cache


@pytest.mark.localinfer_models("{other}")
def test_marker(localinfer_api):
    assert requests.post(API + "tiny/sentiment", json={"inputs": "a"}).status_code == 404


def test_refused(localinfer_api):
    from localinfer.testing import NetworkRefusedError

    with pytest.raises(NetworkRefusedError, match="https://example.com/"):
        requests.get("https://example.com/")
"""


def test_pytest_plugin_with_parallel_workers(tiny, tmp_path):
    """The plugin under a real `pytest -n 2` (pytest-xdist): both workers answer the model with engines of their
    own, the exports folder is the run's, and the model is exported once."""
    (tmp_path / "models.toml").write_text(
        f'[models."tiny/sentiment"]\npath = "{tiny["distilbert-sentiment"]}"\ntask = "text-classification"\n'
    )
    (tmp_path / "other.toml").write_text("")
    (tmp_path / "pytest.ini").write_text("[pytest]\nlocalinfer_models = models.toml\n")
    workers = tmp_path / "workers"  # one file per answering test: worker, process, engine
    workers.mkdir()
    tests = PLUGIN_TESTS.replace("{other}", str(tmp_path / "other.toml")).replace("{workers}", str(workers))
    (tmp_path / "test_app.py").write_text(tests)
    run = tmp_path / "run"  # the run's base temporary folder: xdist puts each worker's under it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for name in ("LOCALINFER_MODELS", "LOCALINFER_HOME", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    installed = any(ep.value == "localinfer.pytest_plugin" for ep in entry_points(group="pytest11"))
    load = [] if installed else ["-p", "localinfer.pytest_plugin"]  # the entry point loads it once installed
    command = [sys.executable, "-m", "pytest", "-q", "-n", "2", *load, "-p", "no:cacheprovider", f"--basetemp={run}"]
    done = subprocess.run(
        [*command, "test_app.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "7 passed" in output, output[-3000:]
    answered = [f.name.split(".") for f in workers.iterdir()]
    assert len(answered) == 4 and len({engine for _, _, engine in answered}) == 4  # a fresh engine per test
    assert {worker for worker, _, _ in answered} == {"gw0", "gw1"}, answered  # both workers answered the model
    assert len({pid for _, pid, _ in answered}) == 2
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("popen-")) == ["popen-gw0", "popen-gw1"]
    exports = [p for p in (run / "localinfer-home" / "exports").rglob("*.onnx")]
    assert len(exports) == 1, exports  # one export, shared by both workers


def _same(a, b) -> bool:
    try:
        assert_close(a, b, 1e-5)
    except AssertionError:
        return False
    return True


def _characters(inputs) -> int:
    if isinstance(inputs, str):
        return len(inputs)
    if isinstance(inputs, dict):
        return sum(_characters(v) for v in inputs.values())
    return sum(_characters(v) for v in inputs)


# -- chat completions (issue 13's routes, answered in-process: issue 15's router.huggingface.co/.../v1/chat/completions)

CHAT = "tiny/gpt2-chat"
CHAT_MESSAGES = [{"role": "user", "content": "Which movie is the best ?"}]


def _in_process_reply(engine: LocalInference, max_tokens: int) -> str:
    """The chat's answer computed in-process, without HTTP (localinfer.chat, greedy)."""
    from localinfer.chat import open_chat

    chat = open_chat(engine, CHAT, CHAT_MESSAGES, {"max_new_tokens": max_tokens, "do_sample": False})
    return "".join(text for _, text in chat.choice(0).tokens)


def test_inference_client_chat_completion_by_bare_model_id(local, fresh, no_socket):
    expected = _in_process_reply(fresh, 6)
    with intercept(local) as api:
        client = InferenceClient(model=CHAT)
        answer = client.chat_completion(CHAT_MESSAGES, max_tokens=6, temperature=0)
        streamed = list(client.chat_completion(CHAT_MESSAGES, max_tokens=6, temperature=0, stream=True))
    assert answer.choices[0].message.content == expected and answer.usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected
    assert [(c.model, c.status) for c in api.calls] == [(CHAT, 200), (CHAT, 200)]
    assert api.calls[0].url == f"{ROUTER}/models/{CHAT}/v1/chat/completions"
    assert api.calls[0].payload["messages"] == CHAT_MESSAGES


def test_the_routers_chat_route_with_requests_and_httpx(local, fresh, no_socket):
    expected = _in_process_reply(fresh, 5)
    body = {"model": CHAT, "messages": CHAT_MESSAGES, "max_tokens": 5, "temperature": 0}
    url = "https://router.huggingface.co/v1/chat/completions"
    with intercept(local) as api:
        plain = requests.post(url, json=body, headers=HEADERS, timeout=60).json()
        with requests.post(url, json={**body, "stream": True}, stream=True, timeout=60) as response:
            events = [line for line in response.iter_lines() if line]
        with httpx.Client() as client, client.stream("POST", url, json={**body, "stream": True}) as response:
            httpx_events = [line for line in response.iter_lines() if line]
    assert plain["choices"][0]["message"]["content"] == expected
    assert events[-1] == b"data: [DONE]" and httpx_events[-1] == "data: [DONE]"
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == expected
    httpx_chunks = [orjson.loads(e.removeprefix("data: ")) for e in httpx_events[:-1]]
    assert [c["choices"] for c in httpx_chunks] == [c["choices"] for c in chunks]
    assert [c.status for c in api.calls] == [200, 200, 200] and {c.model for c in api.calls} == {CHAT}


def test_async_httpx_streams_a_chat(local, fresh, no_socket):
    expected = _in_process_reply(fresh, 4)
    body = {"model": CHAT, "messages": CHAT_MESSAGES, "max_tokens": 4, "temperature": 0, "stream": True}

    async def ask() -> list[str]:
        async with httpx.AsyncClient() as client:
            async with client.stream("POST", "https://router.huggingface.co/v1/chat/completions", json=body) as r:
                return [line async for line in r.aiter_lines() if line]

    with intercept(local):
        lines = asyncio.run(ask())
    assert lines[-1] == "data: [DONE]"
    assert "".join(orjson.loads(x[6:])["choices"][0]["delta"]["content"] for x in lines[:-1]) == expected


def test_text_generation_streams_in_process(local, fresh, no_socket):
    parameters = {"max_new_tokens": 8, "do_sample": False}
    expected = fresh.query("tiny/gpt2", {"inputs": "Today", "parameters": {**parameters, "return_full_text": False}})
    with intercept(local) as api:
        pieces = list(InferenceClient(model="tiny/gpt2").text_generation("Today", stream=True, **parameters))
    assert "".join(pieces) == expected[0]["generated_text"] and len(pieces) > 1
    assert [(c.model, c.task, c.status) for c in api.calls] == [("tiny/gpt2", "text-generation", 200)]


@pytest.mark.parametrize("library", ["requests", "httpx"])
def test_a_streamed_body_is_computed_as_it_is_read(local, no_socket, monkeypatch, library):
    """Reading the first event and closing the response stops the generation: nothing is computed ahead."""
    from localinfer.decoding import models

    original, steps = models.step_model, []

    def counting(*args, **kwargs):
        model = original(*args, **kwargs)
        step = model.step
        model.step = lambda tokens: steps.append(1) or step(tokens)
        return model

    monkeypatch.setattr(models, "step_model", counting)
    url = f"{API}/models/tiny/gpt2-long"
    payload = {"inputs": "Today", "stream": True, "parameters": {"max_new_tokens": 250, "do_sample": False}}
    with intercept(local):
        if library == "requests":
            with requests.post(url, json=payload, stream=True, timeout=60) as response:
                first = next(response.iter_lines())
        else:
            with httpx.Client() as client, client.stream("POST", url, json=payload) as response:
                first = next(response.iter_lines())
    assert first.startswith(b"data:" if library == "requests" else "data:")
    assert 0 < len(steps) < 50  # the full answer is 250 tokens (tests/test_tgi.py: test_the_full_answer_is_long)


def test_the_openai_package_is_answered_in_process(local, fresh, no_socket):
    """openai 3.x sends through httpx2: its chat completions reach the router's route in-process, streamed and not,
    sync and async, and any other URL is refused before a name is looked up."""
    import openai

    expected = _in_process_reply(fresh, 5)
    body = {"model": CHAT, "messages": CHAT_MESSAGES, "max_tokens": 5, "temperature": 0}
    base = "https://router.huggingface.co/v1"

    async def ask_async() -> str:
        async with openai.AsyncOpenAI(base_url=base, api_key="hf_x", max_retries=0) as client:
            stream = await client.chat.completions.create(**body, stream=True)
            return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    with intercept(local) as api:
        client = openai.OpenAI(base_url=base, api_key="hf_x", max_retries=0)
        created = client.chat.completions.create(**body)
        streamed = "".join(
            c.choices[0].delta.content or "" for c in client.chat.completions.create(**body, stream=True)
        )
        by_async = asyncio.run(ask_async())
        with pytest.raises(NetworkRefusedError, match="api.openai.com"):  # loudly, not as a connection error
            openai.OpenAI(api_key="sk-x", max_retries=0).models.list()
    assert created.choices[0].message.content == streamed == by_async == expected
    assert api.refused == ["https://api.openai.com/v1/models"] and [c.status for c in api.calls] == [200, 200, 200]
