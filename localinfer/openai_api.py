"""The OpenAI-compatible routes, free of any web framework (as `http.py`, whose `handle` dispatches here):

- `POST /v1/chat/completions` (the model in the body) and `POST /models/{id}/v1/chat/completions` (the model in the
  path: what `InferenceClient(model=URL).chat_completion` posts to, and, under router.huggingface.co/hf-inference,
  what it builds for a bare model id);
- `POST /v1/embeddings`; `GET /v1/models`.

Requests are validated here (pydantic models of the fields the `openai` package 3.57 and huggingface_hub 0.36's
`chat_completion` send); the work is `chat.py`'s. Answers are OpenAI's JSON (`ChatCompletion`, `ChatCompletionChunk`
over server-sent events ending with `data: [DONE]`, `CreateEmbeddingResponse`, the model list); every error is
OpenAI's `{"error": {"message", "type", "param", "code"}}`, under the same token rule, body limit and bounds as the
hosted-API routes. Choices: a stop sequence stays at the end of the text (as transformers' stop strings and TGI
keep it); `max_tokens` defaults to the model's generation config (else 20) and is bounded as text-generation's
`max_new_tokens`; without `temperature` the model's generation config decides whether to sample, as the pipeline
does; `finish_reason` is "length" or "stop" (an eos token or a stop sequence).
"""

from __future__ import annotations

import base64
import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__
from .chat import Chat, embed, open_chat
from .engine import LocalInference
from .errors import InferenceError
from .http import UNAUTHORIZED, HttpResponse, authorized, json_response, options_from_headers
from .payload import format_validation_error
from .tgi import sse

log = logging.getLogger("localinfer.server")

_CHAT = re.compile(r"^(?:/models/(?P<model_id>.+))?/v1/chat/completions$")
FINGERPRINT = f"localinfer-{__version__}"
# pydantic names the member of a union in an error's location (payload.py's rule): not a field of the request.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|[A-Z]\w*|.*\[.*\])$")
# OpenAI's error `type` for each status the engine answers.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "server_error",
}


@dataclass(frozen=True)
class Route:
    """An OpenAI-compatible route: `kind` is chat, embeddings or models; `model_id` the path's model, if any."""

    kind: str
    model_id: str | None = None


def route(path: str) -> Route | None:
    """The OpenAI-compatible route `path` (percent-decoded) names, or None."""
    if path == "/v1/embeddings":
        return Route("embeddings")
    if path == "/v1/models":
        return Route("models")
    found = _CHAT.match(path)
    return Route("chat", found["model_id"]) if found else None


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None, headers: dict | None = None
) -> HttpResponse:
    error_type = _ERROR_TYPES.get(status, "server_error")
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return json_response(body, status, headers)


def from_inference_error(exc: InferenceError) -> HttpResponse:
    """An engine error in OpenAI's shape (its status kept; a loading model's `estimated_time` as Retry-After)."""
    codes = {404: "model_not_found", 413: "request_too_large", 503: "model_loading"}
    headers = {"retry-after": str(max(1, round(exc.extra["estimated_time"])))} if "estimated_time" in exc.extra else {}
    return error_response(exc.status, exc.message, code=codes.get(exc.status), headers=headers)


# -- requests -----------------------------------------------------------------------------------------------------


class _Request(BaseModel):
    # Clients send optional fields this server does not use (user, metadata, ...): ignored, as OpenAI's servers
    # ignore unknown ones; those that would change the answer are refused by `unsupported` below.
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Request):
    type: Literal["text"]
    text: str


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_template_message(self) -> dict[str, str]:
        # OpenAI's "developer" is the former "system": chat templates know the latter.
        role = "system" if self.role == "developer" else self.role
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": role, "content": content}


class StreamOptions(_Request):
    include_usage: bool = False


Tokens = Annotated[int, Field(ge=1, le=250)]


class ChatCompletionRequest(_Request):
    model: str | None = None
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    n: Annotated[int, Field(ge=1, le=10)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=0)] | None = None  # the chosen token's only
    frequency_penalty: Annotated[float, Field(ge=0, le=0)] | None = None
    presence_penalty: Annotated[float, Field(ge=0, le=0)] | None = None
    tools: Annotated[list, Field(max_length=0)] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    response_format: dict[str, Any] | None = None
    logit_bias: Annotated[dict[str, Any], Field(max_length=0)] | None = None

    def parameters(self) -> dict[str, Any]:
        """The generation parameters of `chat.ChatParameters`."""
        parameters: dict[str, Any] = {}
        max_tokens = self.max_completion_tokens or self.max_tokens
        if max_tokens is not None:
            parameters["max_new_tokens"] = max_tokens
        if self.temperature is not None:
            parameters["temperature"] = self.temperature
            parameters["do_sample"] = self.temperature > 0
        if self.top_p is not None:
            parameters["top_p"] = self.top_p
        if self.seed is not None:
            parameters["seed"] = self.seed
        if self.stop:
            parameters["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        return parameters


class EmbeddingsRequest(_Request):
    model: str
    input: str | Annotated[list[str], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


def _validated(model: type[BaseModel], body: bytes) -> BaseModel | HttpResponse:
    """The request model of a JSON body, or the 400 that says which field is wrong (`param` names it)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return error_response(400, "the request body is not valid JSON")
    if not isinstance(payload, dict):
        return error_response(400, "the request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]["loc"]
        param = ".".join(str(p) for p in first if not (isinstance(p, str) and _UNION_MEMBER.match(p)))
        return error_response(400, format_validation_error(exc, "").lstrip("."), param=param or None)


# -- the routes ---------------------------------------------------------------------------------------------------


def handle(
    engine: LocalInference,
    method: str,
    target: Route,
    headers: Mapping[str, str],
    body: bytes,
    *,
    token: str | None = None,
) -> HttpResponse:
    """Answer one request to an OpenAI-compatible route (`headers` with lower-case names). Never raises."""
    expected = "GET" if target.kind == "models" else "POST"
    if method.upper() != expected:
        return error_response(
            405, f"method {method} not allowed: this route takes {expected}", headers={"allow": expected}
        )
    if token is not None and not authorized(headers, token):
        return error_response(401, UNAUTHORIZED["error"], code="invalid_api_key")
    if target.kind == "models":
        return json_response(models(engine))
    # As the hosted routes: a model still loading answers 503 (OpenAI's shape, Retry-After) on an engine that
    # emulates loading, unless the request asks to wait (`x-wait-for-model`).
    wait = options_from_headers(headers).get("wait_for_model", False)
    try:
        response = (
            embeddings(engine, body, wait=wait)
            if target.kind == "embeddings"
            else chat_completions(engine, target.model_id, body, wait=wait)
        )
    except InferenceError as exc:
        response = from_inference_error(exc)
    except Exception:  # never a traceback to the client
        log.exception("unexpected failure on the %s route", target.kind)
        response = error_response(500, "unknown error")
    if response.status == 200 and response.model_id is not None:  # what computed it, as the hosted routes say
        loaded_as = "feature-extraction" if target.kind == "embeddings" else None  # as embed / open_chat load it
        response.headers["x-compute-type"] = engine.compute_type(response.model_id, task=loaded_as)
    if response.model_id is None:  # an error: which model was asked, for the interceptor's record of calls
        response.model_id = target.model_id or _asked_model(body)
        response.task = "feature-extraction" if target.kind == "embeddings" else "text-generation"
    return response


def _asked_model(body: bytes) -> str | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = payload.get("model") if isinstance(payload, dict) else None
    return model if isinstance(model, str) else None


def models(engine: LocalInference) -> dict[str, Any]:
    created = int(engine.models_file.stat().st_mtime) if engine.models_file.is_file() else 0
    listed = [{"id": m, "object": "model", "created": created, "owned_by": "localinfer"} for m in engine.registry.ids()]
    return {"object": "list", "data": listed}


def embeddings(engine: LocalInference, body: bytes, *, wait: bool = True) -> HttpResponse:
    request = _validated(EmbeddingsRequest, body)
    if isinstance(request, HttpResponse):
        return request
    texts = [request.input] if isinstance(request.input, str) else request.input
    vectors, tokens = embed(engine, request.model, texts, wait=wait)
    if request.dimensions is not None and vectors and request.dimensions != len(vectors[0]):
        return error_response(
            400, f"dimensions: {request.model} answers {len(vectors[0])} dimensions", param="dimensions"
        )
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(vector, request.encoding_format)}
        for i, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    response = json_response({"object": "list", "data": data, "model": request.model, "usage": usage})
    response.model_id, response.task = request.model, "feature-extraction"
    return response


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    """`base64`: the float32 little-endian bytes, as OpenAI sends them (and the openai package decodes them)."""
    if encoding == "float":
        return vector
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def chat_completions(engine: LocalInference, path_model: str | None, body: bytes, *, wait: bool = True) -> HttpResponse:
    request = _validated(ChatCompletionRequest, body)
    if isinstance(request, HttpResponse):
        return request
    if request.response_format and request.response_format.get("type") != "text":
        return error_response(400, "response_format: only text is answered", param="response_format")
    model_id = path_model or request.model
    if not model_id:
        return error_response(400, "model: field required", param="model")
    messages = [m.as_template_message() for m in request.messages]
    chat = open_chat(engine, model_id, messages, request.parameters(), wait=wait)
    reply = _ChatReply(chat, request, f"chatcmpl-{uuid.uuid4().hex}", int(time.time()))
    if request.stream:
        response = HttpResponse(200, {"content-type": "text/event-stream", "cache-control": "no-cache"}, b"")
        response.stream = reply.chunks()
    else:
        response = json_response(reply.completion())
    response.model_id, response.task = model_id, "text-generation"
    return response


_FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}


@dataclass
class _ChatReply:
    chat: Chat
    request: ChatCompletionRequest
    id: str
    created: int

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.chat.model_id,
            "system_fingerprint": FINGERPRINT,
        }

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = len(self.chat.prompt)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    @staticmethod
    def _logprob(text: str, logprob: float | None) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8")), "top_logprobs": []}

    def completion(self) -> dict[str, Any]:
        choices, generated = [], 0
        for index in range(self.request.n):
            tokens = list(self.chat.choice(index, logprobs=bool(self.request.logprobs)).tokens)
            generated += len(tokens)
            logprobs = {"content": [self._logprob(t, g.logprob) for g, t in tokens]} if self.request.logprobs else None
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": "".join(text for _, text in tokens)},
                    "logprobs": logprobs,
                    "finish_reason": _FINISH[tokens[-1][0].finish_reason] if tokens else "length",
                }
            )
        return {**self._head("chat.completion"), "choices": choices, "usage": self._usage(generated)}

    def chunks(self) -> Iterator[bytes]:
        """The streamed answer: per choice a first chunk with the role, one per token (the last with its
        finish_reason), then the usage chunk when `stream_options.include_usage`, then `[DONE]`. A failure after
        the first chunk is an error event (OpenAI's shape; `error_type` for huggingface_hub)."""
        head, generated = self._head("chat.completion.chunk"), 0
        try:
            for index in range(self.request.n):
                opened = self.chat.choice(index, logprobs=bool(self.request.logprobs))
                yield sse({**head, "choices": [_delta(index, "", None)]})
                for token, text in opened.tokens:
                    generated += 1
                    choice = _delta(index, text, token.finish_reason and _FINISH[token.finish_reason])
                    if self.request.logprobs:
                        choice["logprobs"] = {"content": [self._logprob(text, token.logprob)]}
                    yield sse({**head, "choices": [choice]})
            if self.request.stream_options and self.request.stream_options.include_usage:
                yield sse({**head, "choices": [], "usage": self._usage(generated)})
            yield sse(b"[DONE]")
        except InferenceError as exc:
            yield sse({"error": _error_body(exc.status, exc.message), "error_type": "generation"})
        except Exception:
            log.exception("streamed chat completion failed after %d tokens", generated)
            yield sse({"error": _error_body(500, "unknown error"), "error_type": "generation"})


def _delta(index: int, content: str, finish_reason: str | None) -> dict[str, Any]:
    return {
        "index": index,
        "delta": {"role": "assistant", "content": content},
        "logprobs": None,
        "finish_reason": finish_reason,
    }


def _error_body(status: int, message: str) -> dict[str, Any]:
    return {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": None, "code": None}
