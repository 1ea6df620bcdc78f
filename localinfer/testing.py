"""The hosted Inference API answered in-process, for test suites that must not touch the network.

`intercept()` routes every HTTP call made with `requests` (any `requests.Session`, the module functions
`requests.post(...)` and the session huggingface_hub keeps for `InferenceClient` and `HfApi` included) to a
`LocalInference` engine, through requests' transport-adapter extension point: while the context is active,
`requests.Session.get_adapter` answers every URL with `LocalInferenceAdapter`, so sessions created before the
context are covered as well as new ones. Where httpx is installed, every `httpx.Client` and `httpx.AsyncClient`
(and the module functions `httpx.post(...)`) is covered the same way, through httpx's transport extension point:
`_transport_for_url` answers every URL with `LocalInferenceTransport` / `AsyncLocalInferenceTransport` (mounts and
proxies included). Both answer

- `https://api-inference.huggingface.co/models/{id}`, `/pipeline/{task}/{id}`, `/models/{id}/pipeline/{task}`;
- `https://router.huggingface.co/hf-inference/models/{id}` (and `.../pipeline/{task}`), where `InferenceClient`
  sends a bare model id;
- the Hub lookups `InferenceClient` makes first for a bare model id (`GET https://huggingface.co/api/models/{id}`,
  with or without `expand=inferenceProviderMapping`): the engine's registry answers that `hf-inference` serves the
  model for its task (`pipeline_tag`, `tags`, `inferenceProviderMapping`), and 404 for a model it does not know;

with the same status codes, headers and bodies as `localinfer serve` (both answer through `localinfer.http`).
`/v1/chat/completions` (router.huggingface.co's, with the model in the body, and the one
`InferenceClient.chat_completion` builds under `/hf-inference/models/{id}/`) goes to the same handler, which answers
the chat completion as the server does (localinfer/openai_api.py). A streamed answer (`"stream": true`: TGI's
events, chat completion chunks) is a response body that computes each chunk as the client reads it, so
`iter_lines()` sees the events arrive one by one. Any other URL raises `NetworkRefusedError` naming it: no
connection is ever opened.

HF_HUB_OFFLINE: localinfer sets it on import, and with it huggingface_hub mounts an `OfflineAdapter` on the sessions
it builds, which raises `OfflineModeIsEnabled` for every request (huggingface_hub/utils/_http.py); that adapter is
the only thing in the client's path that reads the switch. The interceptor's `get_adapter` is consulted before any
mounted adapter, so the hosted API's calls are answered while the switch stays set, and every other URL is still
refused (by `NetworkRefusedError`, itself an `OfflineModeIsEnabled`, so libraries that fall back to their local
cache on offline mode keep doing so). Nothing is changed in the environment or in huggingface_hub's constants.

httpx2 (the fork the `openai` package 3.x sends through) is covered in the same way where it is installed, so
`openai.OpenAI(base_url="https://router.huggingface.co/v1").chat.completions.create(...)` is answered too, and any
other URL it asks for is refused before a name is looked up.

httpx is optional: localinfer does not depend on it (nor does huggingface_hub 0.x's InferenceClient), and it is
patched only if it is importable. An async client's request is answered inline, on the event loop's thread, as the
engine computes it: no thread, no socket.
"""

from __future__ import annotations

import contextlib
import http as std_http
import io
import re
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import requests
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import OfflineModeIsEnabled
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3 import HTTPResponse

from . import http
from .engine import LocalInference
from .errors import InferenceError

try:
    import httpx
except ImportError:  # optional: only an installed httpx has clients to answer
    httpx = None
try:
    import httpx2
except ImportError:  # optional: the openai package's HTTP library
    httpx2 = None

INFERENCE_HOSTS = frozenset({"api-inference.huggingface.co", urlsplit(hub_constants.INFERENCE_ENDPOINT).hostname})
ROUTER_HOST = urlsplit(hub_constants.INFERENCE_PROXY_TEMPLATE).hostname  # router.huggingface.co
HUB_HOSTS = frozenset({"huggingface.co", urlsplit(hub_constants.ENDPOINT).hostname})
_MODEL_INFO = re.compile(r"^/api/models/(?P<model_id>.+?)(?:/revision/[^/]+)?$")
# huggingface_hub memoises these lookups for the process: cleared on entry and exit, so no answer crosses a context.
_HUB_MEMOS = (
    ("huggingface_hub.inference._providers._common", "_fetch_inference_provider_mapping"),
    ("huggingface_hub.inference._providers.hf_inference", "_check_supported_task"),
    ("huggingface_hub.inference._providers.hf_inference", "_fetch_recommended_models"),
)
# A model id's task as the Hub's model info spells it: embeddings serve both of these (hf_inference.py's check).
_EMBEDDING_TASKS = ("feature-extraction", "sentence-similarity")


class NetworkRefusedError(OfflineModeIsEnabled):
    """A request the interceptor does not answer: it would have left the machine."""


@dataclass
class Call:
    """One request to an inference route: which model and task answered, what was sent, the status."""

    model: str
    task: str | None
    status: int
    url: str
    body: bytes = field(repr=False)
    content_type: str | None = field(default=None, repr=False)

    @property
    def payload(self) -> Any:
        """The body as the engine read it: JSON decoded, else the raw bytes (an image, audio, plain text)."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return self.body


class LocalInferenceAdapter(BaseAdapter):
    """A requests transport adapter that answers from an `Interceptor` instead of a connection."""

    def __init__(self, interceptor: Interceptor) -> None:
        super().__init__()
        self.interceptor = interceptor

    def send(self, request: requests.PreparedRequest, stream: bool = False, **kwargs: Any) -> requests.Response:
        answer = self.interceptor.respond(request.method or "GET", request.url or "", request.headers, _body(request))
        if answer.stream is not None:  # no content-length: read to the end, each chunk computed as it is read
            body: io.IOBase = io.BufferedReader(_ChunkReader(answer.stream))
            headers = answer.headers
        else:
            body, headers = io.BytesIO(answer.body), {**answer.headers, "content-length": str(len(answer.body))}
        raw = HTTPResponse(
            body=body,
            headers=headers,
            status=answer.status,
            reason=std_http.HTTPStatus(answer.status).phrase,
            preload_content=False,
            decode_content=False,
            request_url=request.url,
        )
        # requests' own conversion of a urllib3 response (it only reads the adapter as `response.connection`)
        return HTTPAdapter.build_response(self, request, raw)  # type: ignore[arg-type]

    def close(self) -> None:
        pass


class _ChunkReader(io.RawIOBase):
    """A streamed answer's chunks as a readable file (what urllib3's HTTPResponse reads); closing it closes them."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()


def _body(request: requests.PreparedRequest) -> bytes:
    body = request.body
    if body is None:
        return b""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if hasattr(body, "read"):  # a file given as data=
        return body.read()
    return b"".join(chunk.encode() if isinstance(chunk, str) else chunk for chunk in body)  # an iterable


if httpx is not None:

    class LocalInferenceTransport(httpx.BaseTransport):
        """An httpx transport that answers from an `Interceptor` instead of a connection."""

        def __init__(self, interceptor: Interceptor) -> None:
            self.interceptor = interceptor

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            answer = self.interceptor.respond(request.method, str(request.url), request.headers, request.read())
            return _httpx_response(answer, request)

    class AsyncLocalInferenceTransport(httpx.AsyncBaseTransport):
        """The same for `httpx.AsyncClient`: the engine answers inline, on the event loop's thread."""

        def __init__(self, interceptor: Interceptor) -> None:
            self.interceptor = interceptor

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            body = await request.aread()
            return _httpx_response(
                self.interceptor.respond(request.method, str(request.url), request.headers, body),
                request,
                asynchronous=True,
            )

    def _httpx_response(
        answer: http.HttpResponse, request: httpx.Request, *, asynchronous: bool = False
    ) -> httpx.Response:
        # content= sets content-length; the body is sent as is (no content-encoding). A streamed answer is an
        # iterator that computes each chunk as the client reads it.
        content: Any = answer.body
        if answer.stream is not None:
            content = _async_chunks(answer.stream) if asynchronous else answer.stream
        return httpx.Response(answer.status, headers=answer.headers, content=content, request=request)


if httpx2 is not None:

    class Httpx2Transport(httpx2.BaseTransport):
        """The httpx2 transport that answers from an `Interceptor` (the openai package's sync client)."""

        def __init__(self, interceptor: Interceptor) -> None:
            self.interceptor = interceptor

        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            answer = self.interceptor.respond(request.method, str(request.url), request.headers, request.read())
            return _httpx2_response(answer, request, asynchronous=False)

    class AsyncHttpx2Transport(httpx2.AsyncBaseTransport):
        """The same for `httpx2.AsyncClient` (the openai package's async client), answered inline."""

        def __init__(self, interceptor: Interceptor) -> None:
            self.interceptor = interceptor

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            body = await request.aread()
            answer = self.interceptor.respond(request.method, str(request.url), request.headers, body)
            return _httpx2_response(answer, request, asynchronous=True)

    def _httpx2_response(answer: http.HttpResponse, request: httpx2.Request, *, asynchronous: bool) -> httpx2.Response:
        content: Any = answer.body
        if answer.stream is not None:
            content = _async_chunks(answer.stream) if asynchronous else answer.stream
        return httpx2.Response(answer.status, headers=answer.headers, content=content, request=request)


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:  # computed inline, on the event loop's thread, as the interceptor answers async clients
        yield chunk


class Interceptor(contextlib.ContextDecorator):
    """The context manager and decorator `intercept()` returns. `calls` lists every inference call answered,
    `refused` every URL refused."""

    def __init__(self, engine: LocalInference) -> None:
        self.engine = engine
        self.adapter = LocalInferenceAdapter(self)
        if httpx is not None:
            self.transport = LocalInferenceTransport(self)
            self.async_transport = AsyncLocalInferenceTransport(self)
        if httpx2 is not None:
            self.transport2 = Httpx2Transport(self)
            self.async_transport2 = AsyncHttpx2Transport(self)
        self.calls: list[Call] = []
        self.refused: list[str] = []

    def __enter__(self) -> Interceptor:
        _install(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _uninstall(self)

    def respond(self, method: str, url: str, headers: Any, body: bytes) -> http.HttpResponse:
        """The answer to one request, as `localinfer serve` gives it; raises NetworkRefusedError for any URL that
        is not the hosted API's."""
        parts = urlsplit(url)
        host, path = (parts.hostname or "").lower(), unquote(parts.path)
        if parts.scheme == "https" and host == ROUTER_HOST:
            if path.startswith("/hf-inference/"):
                path = path.removeprefix("/hf-inference")
            elif path != "/v1/chat/completions":  # another provider
                host = ""
        if parts.scheme == "https" and (host in INFERENCE_HOSTS or host == ROUTER_HOST):
            answer = http.handle(self.engine, method, path, headers, body)
            if answer.model_id is not None:
                self.calls.append(
                    Call(answer.model_id, answer.task, answer.status, url, body, headers.get("content-type"))
                )
            return answer
        found = _MODEL_INFO.match(path)
        if parts.scheme == "https" and host in HUB_HOSTS and method.upper() == "GET" and found:
            return self.model_info(found["model_id"])
        self.refused.append(url)
        raise NetworkRefusedError(
            f"localinfer.testing.intercept refused {method} {url}: only the hosted Inference API "
            "(api-inference.huggingface.co, router.huggingface.co/hf-inference, the Hub's model info) is answered "
            "in-process, and nothing else may reach the network"
        )

    def model_info(self, model_id: str) -> http.HttpResponse:
        """The Hub's model info as InferenceClient reads it: `hf-inference` serves the model for its task."""
        try:
            _, handler = self.engine.resolve(model_id)
        except InferenceError as exc:
            if exc.status == 404:  # what huggingface_hub turns into RepositoryNotFoundError
                return http.json_response({"error": "Repository not found"}, 404, {"x-error-code": "RepoNotFound"})
            return http.error_response(exc)
        task = handler.name
        tags = list(_EMBEDDING_TASKS) if task in _EMBEDDING_TASKS else [task]
        info = {
            "id": model_id,
            "modelId": model_id,
            "pipeline_tag": task,
            "tags": tags,
            "inferenceProviderMapping": {"hf-inference": {"status": "live", "providerId": model_id, "task": task}},
        }
        return http.json_response(info)


def intercept(engine: LocalInference | None = None, *, models: str | Path | None = None) -> Interceptor:
    """Answer the hosted Inference API in-process while the context (or the decorated function) runs.

    `engine` answers; without one, a `LocalInference` over the models file `models` (default: the one `query`
    uses). Contexts nest: the innermost answers.

        with intercept(models="tests/models.toml") as api:
            requests.post("https://api-inference.huggingface.co/models/tiny/x", json={"inputs": "hi"})
            assert api.calls[0].status == 200
    """
    if engine is None:
        if models is None:
            from . import default_engine

            engine = default_engine()
        else:
            engine = LocalInference(models)
    return Interceptor(engine)


_active: list[Interceptor] = []
_lock = threading.Lock()
_original_get_adapter = requests.Session.get_adapter
if httpx is not None:
    _original_transport_for_url = httpx.Client._transport_for_url
    _original_async_transport_for_url = httpx.AsyncClient._transport_for_url
if httpx2 is not None:
    _httpx2_originals = (httpx2.Client._transport_for_url, httpx2.AsyncClient._transport_for_url)


def _get_adapter(session: requests.Session, url: str) -> BaseAdapter:
    try:
        return _active[-1].adapter
    except IndexError:  # the last context exited in another thread since this request began
        return _original_get_adapter(session, url)


def _transport_for_url(client: Any, url: Any) -> Any:
    try:
        return _active[-1].transport
    except IndexError:
        return _original_transport_for_url(client, url)


def _async_transport_for_url(client: Any, url: Any) -> Any:
    try:
        return _active[-1].async_transport
    except IndexError:
        return _original_async_transport_for_url(client, url)


def _transport2_for_url(client: Any, url: Any) -> Any:
    try:
        return _active[-1].transport2
    except IndexError:
        return _httpx2_originals[0](client, url)


def _async_transport2_for_url(client: Any, url: Any) -> Any:
    try:
        return _active[-1].async_transport2
    except IndexError:
        return _httpx2_originals[1](client, url)


def _install(interceptor: Interceptor) -> None:
    with _lock:
        _active.append(interceptor)
        requests.Session.get_adapter = _get_adapter  # type: ignore[method-assign]
        if httpx is not None:
            httpx.Client._transport_for_url = _transport_for_url  # type: ignore[method-assign]
            httpx.AsyncClient._transport_for_url = _async_transport_for_url  # type: ignore[method-assign]
        if httpx2 is not None:
            httpx2.Client._transport_for_url = _transport2_for_url  # type: ignore[method-assign]
            httpx2.AsyncClient._transport_for_url = _async_transport2_for_url  # type: ignore[method-assign]
        _clear_hub_memos()


def _uninstall(interceptor: Interceptor) -> None:
    with _lock:
        for i in range(len(_active) - 1, -1, -1):
            if _active[i] is interceptor:
                del _active[i]
                break
        if not _active:
            requests.Session.get_adapter = _original_get_adapter  # type: ignore[method-assign]
            if httpx is not None:
                httpx.Client._transport_for_url = _original_transport_for_url  # type: ignore[method-assign]
                httpx.AsyncClient._transport_for_url = _original_async_transport_for_url  # type: ignore[method-assign]
            if httpx2 is not None:
                httpx2.Client._transport_for_url, httpx2.AsyncClient._transport_for_url = _httpx2_originals
        _clear_hub_memos()


def _clear_hub_memos() -> None:
    for module_name, name in _HUB_MEMOS:
        function = getattr(sys.modules.get(module_name), name, None)
        if function is not None and hasattr(function, "cache_clear"):
            function.cache_clear()


__all__ = ["Call", "Interceptor", "LocalInferenceAdapter", "NetworkRefusedError", "intercept"]
if httpx is not None:
    __all__ += ["AsyncLocalInferenceTransport", "LocalInferenceTransport"]
if httpx2 is not None:
    __all__ += ["AsyncHttpx2Transport", "Httpx2Transport"]
