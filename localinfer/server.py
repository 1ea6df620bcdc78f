"""The HTTP adapter: the hosted Inference API's routes over LocalInference. No task logic lives here."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator

from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from . import http
from .engine import LocalInference
from .errors import InferenceError, PayloadTooLargeError
from .http import HttpResponse

log = logging.getLogger("localinfer.server")

DEFAULT_MAX_BODY = 50 * 1024 * 1024


def _response(answer: HttpResponse) -> Response:
    if answer.stream is not None:
        return StreamingResponse(_in_threads(answer.stream), status_code=answer.status, headers=answer.headers)
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


async def _in_threads(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A streamed body computed chunk by chunk in worker threads, never on the event loop. A client that disconnects
    cancels the response (starlette's StreamingResponse listens for it); the thread finishes its chunk (anyio waits
    for it), and the iterator is closed: no further token is computed."""
    try:
        async for chunk in iterate_in_threadpool(chunks):
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def create_app(
    engine: LocalInference, *, token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY, preload: bool = True
) -> Starlette:
    """The ASGI app. `token` makes `Authorization: Bearer <token>` required; bodies over `max_body_bytes` are 413."""

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        path = "/" + request.path_params["path"]
        if token is not None and http.is_api_path(path) and not http.authorized(request.headers, token):
            return _response(http.unauthorized(path))  # before reading a stranger's body
        try:
            body = await _read_body(request, max_body_bytes)
        except PayloadTooLargeError as exc:
            return _response(http.error_for_path(path, exc))
        answer = await run_in_threadpool(
            http.handle, engine, request.method, path, request.headers, body, token=token, started=started
        )
        return _response(answer)

    async def health(request: Request) -> Response:
        return _response(http.json_response({"status": "ok", "models": len(engine.registry.ids())}))

    async def models(request: Request) -> Response:
        return _response(http.json_response(await run_in_threadpool(_registry, engine)))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if preload:  # in the background: the server answers (503 with estimated_time) while they load
            for model_id in engine.registry.ids():
                try:
                    engine.start_loading(model_id)
                except InferenceError as exc:
                    log.warning("not preloading %s: %s", model_id, exc.message)
        yield

    routes = [
        Route("/", health, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        # every inference route (/models/{id}, /pipeline/{task}/{id}, /models/{id}/pipeline/{task}): see http.py
        Route("/{path:path}", infer, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _registry(engine: LocalInference) -> list[dict[str, str | int | None]]:
    listed = []
    for model_id in engine.registry.ids():
        try:
            spec, handler = engine.resolve(model_id)
            listed.append(
                {
                    "model_id": model_id,
                    "task": handler.name,
                    "backend": spec.backend,
                    "precision": engine.precision_of(model_id),
                    "state": engine.state(model_id),
                    "queue_depth": engine.queue_depth(model_id),  # requests waiting for a batch
                }
            )
        except InferenceError as exc:
            error = f"error: {exc.message}"
            listed.append({"model_id": model_id, "task": None, "backend": None, "precision": None, "state": error})
    return listed


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body is larger than {limit} bytes (--max-body-size)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is larger than {limit} bytes (--max-body-size)")
        chunks.append(chunk)
    return b"".join(chunks)


def serve(
    engine: LocalInference,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    preload: bool = True,
) -> None:
    """Run the server with uvicorn until interrupted; one log line per request."""
    import uvicorn

    app = create_app(engine, token=token, max_body_bytes=max_body_bytes, preload=preload)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
