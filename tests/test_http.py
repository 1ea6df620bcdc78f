"""localinfer.http: the routes, the option headers, and the response every adapter sends (server, interceptor)."""

from __future__ import annotations

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
