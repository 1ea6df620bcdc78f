"""The HTTP adapter: the hosted Inference API's routes over LocalInference. No task logic lives here."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import http
from .engine import LocalInference
from .errors import InferenceError, PayloadTooLargeError
from .http import HttpResponse

log = logging.getLogger("localinfer.server")

DEFAULT_MAX_BODY = 50 * 1024 * 1024


def _response(answer: HttpResponse) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


def create_app(
    engine: LocalInference, *, token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY, preload: bool = True
) -> Starlette:
    """The ASGI app. `token` makes `Authorization: Bearer <token>` required; bodies over `max_body_bytes` are 413."""

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        path = "/" + request.path_params["path"]
        if token is not None and http.route(path) is not None and not http.authorized(request.headers, token):
            return _response(http.json_response(http.UNAUTHORIZED, 401))  # before reading a stranger's body
        try:
            body = await _read_body(request, max_body_bytes)
        except PayloadTooLargeError as exc:
            return _response(http.error_response(exc))
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


def _registry(engine: LocalInference) -> list[dict[str, str | None]]:
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
                }
            )
        except InferenceError as exc:
            error = f"error: {exc.message}"
            listed.append({"model_id": model_id, "task": None, "backend": None, "precision": None, "state": error})
    return listed


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is larger than {limit} bytes")
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
