"""Text generation streamed as text-generation-inference (TGI) streams it: what `"stream": true` in a text-generation
body answers (`huggingface_hub.InferenceClient.text_generation(stream=True)` sends it to the model's URL).

Server-sent events, one per token: `data: {"index", "token": {"id", "text", "logprob", "special"}, "generated_text",
"details", "top_tokens"}`; the last carries `generated_text` (the answer `query()` gives) and, when
`parameters.details` is set, `details` (`finish_reason`, `generated_tokens`, `seed`, `input_length`). The token texts
join to the new text. A failure after the first event is an event `{"error", "error_type"}`, as TGI sends it
(huggingface_hub's `_format_text_generation_stream_output` raises it). The shapes are huggingface_hub 0.36's
`TextGenerationStreamOutput` (inference/_generated/types/text_generation.py). Nothing here knows HTTP: the stream is
an iterator of bytes that the server and the interceptor send as they please.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson

from .engine import LocalInference
from .errors import InferenceError
from .limits import applied
from .tasks.generation import generation_tokenizer
from .tasks.text_generation import TextGeneration, TokenStream

log = logging.getLogger("localinfer.server")


def wants_stream(body: bytes) -> bool:
    """Whether a request body is a JSON object with `"stream": true` (TGI's switch, beside `inputs`)."""
    if b'"stream"' not in body:
        return False
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(payload, dict) and payload.get("stream") is True


def sse(event: Any) -> bytes:
    """One server-sent event carrying `event` as JSON (or a literal such as `[DONE]`)."""
    data = event if isinstance(event, bytes) else orjson.dumps(event)
    return b"data: " + data + b"\n\n"


def open_stream(
    engine: LocalInference,
    model_id: str,
    body: bytes,
    *,
    task: str | None = None,
    options: dict[str, bool] | None = None,
) -> Iterator[bytes]:
    """Validate a streamed text-generation request and return its events (nothing is generated until they are
    iterated; closing the iterator stops the generation). Raises InferenceError before the first event: a model
    still loading is a 503, as the route's other answers, unless the request (or `options`, from its headers) sets
    `wait_for_model`."""
    handler, model, inputs, parameters = engine.prepare_stream(model_id, body, task=task, options=options)
    with applied(engine.limits):
        opened = handler.open_stream(model, inputs, parameters, logprobs=parameters.details)
    return _events(handler, generation_tokenizer(model), inputs, parameters, opened)


def _events(
    handler: TextGeneration, tokenizer: Any, text: str, parameters: Any, opened: TokenStream
) -> Iterator[bytes]:
    done: list[int] = []
    try:
        for index, (token, piece) in enumerate(opened.tokens):
            done.append(token.id)
            event: dict[str, Any] = {
                "index": index,
                "token": opened.token_json(token, piece),
                "generated_text": None,
                "details": None,
                "top_tokens": None,
            }
            if token.finish_reason is not None:
                sequence = opened.prompt + done
                event["generated_text"] = handler.text(tokenizer, text, opened.prompt, sequence, parameters)
                if parameters.details:
                    event["details"] = {
                        "finish_reason": token.finish_reason,
                        "generated_tokens": len(done),
                        "seed": opened.seed,
                        "input_length": len(opened.prompt),
                    }
            yield sse(event)
    except InferenceError as exc:
        yield sse({"error": exc.message, "error_type": "generation"})
    except Exception:  # never a traceback to the client; the stream ends with TGI's error event
        log.exception("streamed generation failed after %d tokens", len(done))
        yield sse({"error": "unknown error", "error_type": "generation"})
