"""The hosted Inference API's HTTP surface, free of any web framework: an HTTP request (method, path, headers,
body bytes) becomes an engine call, and the engine's answer (or its InferenceError) becomes the status, headers and
body the hosted API answers. `localinfer serve` (server.py) and the in-process interceptor (testing.py) both answer
through `handle`, so they cannot drift apart. `handle` also dispatches the OpenAI-compatible routes (`/v1/...`,
openai_api.py) and TGI's streamed text generation (`"stream": true`, tgi.py): a streamed answer is an
`HttpResponse` whose `stream` is an iterator of byte chunks (server-sent events), sent as it is iterated."""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .engine import Answer, LocalInference
from .errors import InferenceError

log = logging.getLogger("localinfer.server")

# The hosted API's inference routes, in the order they are tried (the model id may contain slashes).
ROUTES = (
    re.compile(r"^/models/(?P<model_id>.*)/pipeline/(?P<task>[^/]+)$"),
    re.compile(r"^/pipeline/(?P<task>[^/]+)/(?P<model_id>.*)$"),
    re.compile(r"^/models/(?P<model_id>.*)$"),
)
# Request headers that set an option of the payload's `options` (they override the body's).
OPTION_HEADERS = (("use_cache", "x-use-cache"), ("wait_for_model", "x-wait-for-model"))


@dataclass
class HttpResponse:
    """What to send back. `model_id` and `task` say which engine call answered (None where none did). `stream`, when
    set, is the body instead of `body`: chunks computed as they are iterated (closing it stops the computation)."""

    status: int
    headers: dict[str, str]
    body: bytes
    model_id: str | None = None
    task: str | None = None
    stream: Iterator[bytes] | None = None


@dataclass(frozen=True)
class Route:
    """An inference route's model id and the task its path names (None: the model's own task)."""

    model_id: str
    task: str | None


def route(path: str) -> Route | None:
    """The inference route `path` (already percent-decoded) names, or None."""
    for pattern in ROUTES:
        match = pattern.match(path)
        if match:
            return Route(match["model_id"], match.groupdict().get("task"))
    return None


def is_api_path(path: str) -> bool:
    """Whether `path` is an inference route or an OpenAI-compatible one (those take the token)."""
    from . import openai_api

    return route(path) is not None or openai_api.route(path) is not None


def unauthorized(path: str) -> HttpResponse:
    """The 401 of a request without the server's token, in the error shape of the route `path` names."""
    from . import openai_api

    if openai_api.route(path) is not None:
        return openai_api.error_response(401, UNAUTHORIZED["error"], code="invalid_api_key")
    return json_response(UNAUTHORIZED, 401)


def error_for_path(path: str, exc: InferenceError) -> HttpResponse:
    """An error raised before `handle` (a body over the limit), in the error shape of the route `path` names."""
    from . import openai_api

    return openai_api.from_inference_error(exc) if openai_api.route(path) is not None else error_response(exc)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, {"content-type": "application/json", **(headers or {})}, orjson.dumps(body))


def error_response(exc: InferenceError) -> HttpResponse:
    """The hosted API's answer to an error: its status and `{"error": ..., ...}`."""
    return json_response(exc.body, exc.status)


def answer_response(answer: Answer, started: float) -> HttpResponse:
    """A 200 with the result and the headers the hosted API sends: compute time and type, cache, usage."""
    headers = {
        "x-compute-time": f"{time.perf_counter() - started:.3f}",
        "x-compute-type": answer.compute_type,
        "x-cache": "hit" if answer.cached else "miss",
        **usage_headers(answer),
    }
    return json_response(answer.result, 200, headers)


def usage_headers(answer: Answer) -> dict[str, str]:
    """What the hosted API reported of the work: characters of text, seconds of audio, or images."""
    if answer.media == "image":
        return {"x-compute-images": "1"}
    if answer.media == "audio":
        return {"x-compute-audio-length": f"{answer.audio_seconds:.3f}"}
    return {"x-compute-characters": str(answer.characters)}


def options_from_headers(headers: Mapping[str, str]) -> dict[str, bool]:
    """`x-use-cache` and `x-wait-for-model` as payload options (`headers` has lower-case names)."""
    options = {}
    for option, name in OPTION_HEADERS:
        value = headers.get(name)
        if value is not None:
            options[option] = value.strip().lower() in ("1", "true", "yes")
    return options


def authorized(headers: Mapping[str, str], token: str) -> bool:
    """Whether `Authorization: Bearer <token>` is present (`headers` has lower-case names)."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


UNAUTHORIZED = {"error": "Authorization header is missing or does not match the server's token"}


def handle(
    engine: LocalInference,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    token: str | None = None,
    started: float | None = None,
) -> HttpResponse:
    """Answer one request to an inference route as the hosted API does. Never raises: an unexpected failure is a
    500 without a traceback (the log has it). `path` is percent-decoded; `token`, when given, is required."""
    # the OpenAI-compatible routes and TGI's stream import this module (HttpResponse): imported here, not above
    from . import openai_api, tgi

    started = time.perf_counter() if started is None else started
    headers = {k.lower(): v for k, v in headers.items()}
    openai_target = openai_api.route(path)
    if openai_target is not None:
        return openai_api.handle(engine, method, openai_target, headers, body, token=token)
    target = route(path)
    if target is None:
        return json_response({"error": f"no inference route at {method} {path}"}, 404)
    if method.upper() != "POST":
        return json_response(
            {"error": f"method {method} not allowed: inference routes take POST"}, 405, {"allow": "POST"}
        )
    if token is not None and not authorized(headers, token):
        return json_response(UNAUTHORIZED, 401)
    try:
        if tgi.wants_stream(body):
            stream = tgi.open_stream(
                engine, target.model_id, body, task=target.task, options=options_from_headers(headers)
            )
            headers = {
                "content-type": "text/event-stream",
                "cache-control": "no-cache",
                "x-compute-type": engine.compute_type(target.model_id, task=target.task),
            }
            response = HttpResponse(200, headers, b"")
            response.stream, response.model_id, response.task = stream, target.model_id, "text-generation"
            return response
        answer = engine.answer(target.model_id, body, task=target.task, options=options_from_headers(headers))
    except InferenceError as exc:
        response = error_response(exc)
    except Exception:  # never a traceback to the client
        log.exception("unexpected failure on %s", path)
        response = json_response({"error": "unknown error"}, 500)
    else:
        response = answer_response(answer, started)
        response.task = answer.task
    response.model_id = target.model_id
    response.task = response.task or target.task
    return response
