"""Raw payloads (dict, str, bytes) -> inputs, parameters and options, as the hosted API parsed them."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from .errors import BadRequestError


class Options(BaseModel):
    """`options` of a request. Unknown options are ignored, as the hosted API ignored them."""

    model_config = ConfigDict(extra="ignore")
    use_cache: StrictBool = True
    wait_for_model: StrictBool = False


@dataclass
class Request:
    inputs: Any
    parameters: dict[str, Any] = field(default_factory=dict)
    options: Options = field(default_factory=Options)


def parse_payload(payload: Any, *, media: bool = False) -> Request:
    """Split a payload into its parts.

    A dict with `inputs` carries `parameters` and `options`; a dict without `inputs` is itself the
    inputs; a str is the inputs. Bytes are JSON text, else UTF-8 text (the inputs), else, for a
    media task (`media=True`), the file itself. A media task also takes base64 under `inputs` or
    `image` in a JSON object, which `huggingface_hub.InferenceClient` sends with parameters.
    """
    if isinstance(payload, (bytes, bytearray, memoryview)):
        payload = _decode_bytes(bytes(payload), media=media)
        if isinstance(payload, bytes):
            return Request(inputs=payload)
    if isinstance(payload, dict):
        request = _from_dict(payload)
    elif isinstance(payload, (str, list, int, float)) and not isinstance(payload, bool):
        request = Request(inputs=payload)
    else:
        raise BadRequestError(f"payload must be a dict, a str or bytes, not {type(payload).__name__}")
    if media and isinstance(request.inputs, str):
        request.inputs = _decode_base64(request.inputs)
    return request


def _decode_bytes(raw: bytes, *, media: bool) -> Any:
    if not raw and not media:
        raise BadRequestError("empty request body: expected JSON or text inputs")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        if media:
            return raw
        raise BadRequestError("request body is neither JSON nor valid UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if media:
            return raw
        return text


def _from_dict(payload: dict[str, Any]) -> Request:
    if "inputs" not in payload:
        if "image" in payload:  # the image tasks' JSON form
            payload = {**payload, "inputs": payload["image"]}
            del payload["image"]
        else:
            return Request(inputs=payload)
    # Other top-level keys (clients send e.g. "stream") are ignored, as the hosted API ignored them.
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequestError("parameters must be a JSON object")
    options = payload.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequestError("options must be a JSON object")
    try:
        parsed_options = Options.model_validate(options)
    except ValidationError as exc:
        raise BadRequestError(format_validation_error(exc, "options")) from None
    if payload["inputs"] is None:
        raise BadRequestError("inputs: field required")
    return Request(inputs=payload["inputs"], parameters=parameters, options=parsed_options)


def _decode_base64(text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError("inputs: expected the file's bytes or a base64 string") from None


def format_validation_error(exc: ValidationError, prefix: str) -> str:
    """One line per problem, each naming its field, e.g. `parameters.top_k: ... (got 0)`."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in (prefix, *err["loc"]) if part != "")
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown parameter")
            continue
        got = err.get("input")
        shown = json.dumps(got, default=repr)[:80] if got is not None or err["type"] != "missing" else ""
        lines.append(f"{where}: {err['msg']}" + (f" (got {shown})" if shown else ""))
    return "; ".join(lines)
