"""The HTTP adapter: the hosted Inference API's routes over LocalInference. No task logic lives here."""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .engine import Answer, LocalInference
from .errors import InferenceError, PayloadTooLargeError

log = logging.getLogger("localinfer.server")

DEFAULT_MAX_BODY = 50 * 1024 * 1024


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _header_flag(request: Request, name: str) -> bool | None:
    value = request.headers.get(name)
    return None if value is None else value.strip().lower() in ("1", "true", "yes")


def _usage_headers(answer: Answer) -> dict[str, str]:
    """What the hosted API reported of the work: characters of text, seconds of audio, or images."""
    if answer.media == "image":
        return {"x-compute-images": "1"}
    if answer.media == "audio":
        return {"x-compute-audio-length": f"{answer.audio_seconds:.3f}"}
    return {"x-compute-characters": str(answer.characters)}


def create_app(
    engine: LocalInference, *, token: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY, preload: bool = True
) -> Starlette:
    """The ASGI app. `token` makes `Authorization: Bearer <token>` required; bodies over `max_body_bytes` are 413."""

    async def infer(request: Request) -> Response:
        started = time.perf_counter()
        params = request.path_params
        try:
            if token is not None and not _authorized(request):
                return _json({"error": "Authorization header is missing or does not match the server's token"}, 401)
            body = await _read_body(request, max_body_bytes)
            options = {
                k: v
                for k, v in (
                    ("use_cache", _header_flag(request, "x-use-cache")),
                    ("wait_for_model", _header_flag(request, "x-wait-for-model")),
                )
                if v is not None
            }
            answer = await run_in_threadpool(
                engine.answer, params["model_id"], body, task=params.get("task"), options=options
            )
        except InferenceError as exc:
            return _json(exc.body, exc.status)
        except Exception:  # never a traceback to the client; the log has it
            log.exception("unexpected failure on %s", request.url.path)
            return _json({"error": "unknown error"}, 500)
        headers = {
            "x-compute-time": f"{time.perf_counter() - started:.3f}",
            "x-compute-type": answer.compute_type,
            "x-cache": "hit" if answer.cached else "miss",
            **_usage_headers(answer),
        }
        return _json(answer.result, 200, headers)

    def _authorized(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    async def health(request: Request) -> Response:
        return _json({"status": "ok", "models": len(engine.registry.ids())})

    async def models(request: Request) -> Response:
        return _json(await run_in_threadpool(_registry, engine))

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
        Route("/models/{model_id:path}/pipeline/{task}", infer, methods=["POST"]),
        Route("/pipeline/{task}/{model_id:path}", infer, methods=["POST"]),
        Route("/models/{model_id:path}", infer, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _registry(engine: LocalInference) -> list[dict[str, str]]:
    listed = []
    for model_id in engine.registry.ids():
        try:
            spec, handler = engine.resolve(model_id)
            listed.append(
                {"model_id": model_id, "task": handler.name, "backend": spec.backend, "state": engine.state(model_id)}
            )
        except InferenceError as exc:
            listed.append({"model_id": model_id, "task": None, "backend": None, "state": f"error: {exc.message}"})
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
