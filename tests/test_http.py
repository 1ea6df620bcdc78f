"""localinfer.http: the routes, the option headers, and the response every adapter sends (server, interceptor)."""

from __future__ import annotations

import json

import orjson
import pytest

from localinfer import http
from localinfer.errors import ModelLoadingError

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize(
    ("path", "model_id", "task"),
    [
        (f"/models/{MINILM}", MINILM, None),
        (f"/pipeline/feature-extraction/{MINILM}", MINILM, "feature-extraction"),
        (f"/models/{MINILM}/pipeline/feature-extraction", MINILM, "feature-extraction"),
        ("/models/gpt2", "gpt2", None),
        ("/models/../../etc/passwd", "../../etc/passwd", None),  # the registry refuses it, not the route
    ],
)
def test_routes(path, model_id, task):
    assert http.route(path) == http.Route(model_id, task)


@pytest.mark.parametrize("path", ["/", "/v1/chat/completions", "/api/models/gpt2", "/pipeline/fill-mask"])
def test_no_route(path):
    assert http.route(path) is None


def test_option_headers():
    assert http.options_from_headers({"x-use-cache": "false", "x-wait-for-model": "True"}) == {
        "use_cache": False,
        "wait_for_model": True,
    }
    assert http.options_from_headers({}) == {}


def test_errors_are_json_with_their_status():
    response = http.error_response(ModelLoadingError("tiny/x", 2.5))
    assert response.status == 503 and response.headers == {"content-type": "application/json"}
    assert orjson.loads(response.body) == {"error": "Model tiny/x is currently loading", "estimated_time": 2.5}


def test_handle(engine):
    payload = orjson.dumps({"inputs": "I like you"})
    answer = http.handle(engine, "POST", "/models/tiny/distilbert-sentiment", {"X-Wait-For-Model": "1"}, payload)
    assert answer.status == 200 and orjson.loads(answer.body) == engine.query("tiny/distilbert-sentiment", payload)
    assert answer.headers["x-compute-characters"] == "10" and answer.headers["x-cache"] in {"hit", "miss"}
    assert (answer.model_id, answer.task) == ("tiny/distilbert-sentiment", "text-classification")
    wrong_method = http.handle(engine, "GET", "/models/tiny/distilbert-sentiment", {}, b"")
    assert wrong_method.status == 405 and wrong_method.headers["allow"] == "POST"
    chat = http.handle(engine, "POST", "/v1/chat/completions", {}, b"{}")  # issue 13: OpenAI's route, its errors
    assert chat.status == 400 and orjson.loads(chat.body)["error"]["param"] == "messages"
    guarded = {"authorization": "Bearer nope"}
    assert http.handle(engine, "POST", "/models/tiny/bert-base", guarded, payload, token="s3cret").status == 401
    ok = http.handle(
        engine, "POST", "/models/tiny/bert-base", {"Authorization": "Bearer s3cret"}, payload, token="s3cret"
    )
    assert ok.status == 200


def test_streams_and_openai_routes_answer_503_while_loading(engine, monkeypatch):
    """With emulated loading (the server's), a TGI stream, a chat completion and an embeddings request to a model
    still loading answer 503 as the model route does (the OpenAI routes in OpenAI's shape with Retry-After), and
    wait for it with `x-wait-for-model`."""
    import threading

    import localinfer.engine as engine_module
    from localinfer import LocalInference

    release = threading.Event()
    original = engine_module.load_model

    def held(*args, **kwargs):
        release.wait(60)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine_module, "load_model", held)
    loading = LocalInference(engine.models_file, engine.home, emulate_loading=True)
    stream = json.dumps({"inputs": "Hello", "stream": True, "parameters": {"max_new_tokens": 2}}).encode()
    chat = json.dumps({"model": "tiny/gpt2-chat", "messages": [{"role": "user", "content": "Hi"}]}).encode()
    embed = json.dumps({"model": "tiny/st-cls", "input": "a happy dog"}).encode()
    requests = [
        ("/models/tiny/gpt2", stream),
        ("/v1/chat/completions", chat),
        ("/v1/embeddings", embed),
    ]
    for path, body in requests:
        response = http.handle(loading, "POST", path, {}, body)
        assert response.status == 503, (path, response.body)
        error = json.loads(response.body)["error"]
        if path.startswith("/v1"):
            assert error["code"] == "model_loading" and int(response.headers["retry-after"]) >= 1
        else:
            assert error.endswith("is currently loading")
    release.set()
    for path, body in requests:
        response = http.handle(loading, "POST", path, {"X-Wait-For-Model": "true"}, body)
        assert response.status == 200, (path, response.body)
        assert response.headers["x-compute-type"] == "cpu+optimized"
        if response.stream is not None:
            assert b"".join(response.stream).startswith(b"data: ")
