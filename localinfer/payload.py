"""Raw payloads (dict, str, bytes) -> inputs, parameters and options, as the hosted API parsed them."""

from __future__ import annotations

import base64
import binascii
import json
import re
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
    except RecursionError:
        raise BadRequestError("request body: JSON nested too deeply to parse") from None
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


# pydantic names the member of a union an error comes from in its location ("str", "list[str]", "TextPair").
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|[A-Z]\w*|.*\[.*\])$")


def format_validation_error(exc: ValidationError, prefix: str) -> str:
    """One line per problem, each naming its field, e.g. `parameters.top_k: ... (got 0)`.

    For a union (`str | list[str]`), only the member the value was meant for is reported: errors
    inside a member win over "not this type" errors; when every member refuses the value's type,
    one line lists the types expected.
    """
    errors = exc.errors(include_url=False)
    inside = [e for e in errors if not (e["loc"] and _is_member(e["loc"][-1]))]
    lines: dict[str, None] = {}
    for err in inside:
        where = _where(prefix, err["loc"])
        if err["type"] == "extra_forbidden":
            lines[f"{where}: unknown parameter"] = None
            continue
        lines[f"{where}: {err['msg']}{_shown(err)}"] = None
    if not inside:
        expected: dict[str, list[str]] = {}
        for err in errors:
            expected.setdefault(_where(prefix, err["loc"][:-1]), []).append(str(err["loc"][-1]))
        for where, members in expected.items():
            err = next(e for e in errors if _where(prefix, e["loc"][:-1]) == where)
            lines[f"{where}: expected {' or '.join(dict.fromkeys(members))}{_shown(err)}"] = None
    return "; ".join(lines)


def _is_member(part: object) -> bool:
    return isinstance(part, str) and bool(_UNION_MEMBER.match(part))


def _where(prefix: str, loc: tuple) -> str:
    return ".".join(str(part) for part in (prefix, *loc) if part != "" and not _is_member(part))


def _shown(err: dict) -> str:
    if err["type"] == "missing":
        return ""
    return f" (got {json.dumps(err.get('input'), default=repr)[:80]})"
