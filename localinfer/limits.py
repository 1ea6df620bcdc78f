"""Every bound on a request, in one place: LocalInference(limits=...), the CLI's and the server's flags.

The defaults suit a 4 GB edge device. A request beyond a bound answers a 4xx that names the bound and how to
change it, never a 500 and never unbounded memory.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import BadRequestError, PayloadTooLargeError

# Pillow's own decompression-bomb bound (PIL.Image.MAX_IMAGE_PIXELS), without importing Pillow here.
PILLOW_MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


@dataclass(frozen=True)
class Limits:
    """`max_json_depth`: nesting of a payload's JSON; `max_list_items`: items of any list in the inputs or the
    parameters; `max_image_pixels`: width x height of an image body; `max_audio_seconds`: duration of an audio
    body, decoded; `max_unchunked_audio_seconds`: the longest audio a model without a window of its own (wav2vec2's
    attention grows with the square of the duration) takes in one pass: CTC speech recognition chunks longer audio
    by default and refuses longer chunks, audio classification refuses longer audio."""

    max_json_depth: int = 64
    max_list_items: int = 1024
    max_image_pixels: int = PILLOW_MAX_IMAGE_PIXELS
    max_audio_seconds: float = 3600.0
    max_unchunked_audio_seconds: float = 30.0

    # The name of each bound's setting, for messages: the Python argument and the command-line flag.
    @staticmethod
    def setting(name: str) -> str:
        return f"Limits({name}=...), --{name.replace('_', '-')}"


_current: contextvars.ContextVar[Limits] = contextvars.ContextVar("localinfer_limits", default=Limits())  # noqa: B039 (frozen)


def current() -> Limits:
    """The limits of the request being answered (the defaults outside one)."""
    return _current.get()


@contextlib.contextmanager
def applied(limits: Limits) -> Iterator[None]:
    token = _current.set(limits)
    try:
        yield
    finally:
        _current.reset(token)


_CONTAINERS = (dict, list, tuple)


def check_structure(value: Any, where: str, limits: Limits) -> None:
    """Nesting depth and list lengths of a JSON-like value, walked without recursion; an error names the field
    (`parameters.ignore_labels`, `inputs[2]`)."""
    stack: list[tuple[Any, int, Any]] = [(value, 1, None)]  # (item, depth, (parent's path, key)) linked
    while stack:
        item, depth, path = stack.pop()
        if depth > limits.max_json_depth:
            raise BadRequestError(
                f"{_field(where, path)}: nested deeper than {limits.max_json_depth} levels "
                f"({Limits.setting('max_json_depth')})"
            )
        if isinstance(item, dict):
            children: Any = item.items()
        elif isinstance(item, (list, tuple)):
            if len(item) > limits.max_list_items:
                raise BadRequestError(
                    f"{_field(where, path)}: a list of {len(item)} items; the limit is {limits.max_list_items} "
                    f"({Limits.setting('max_list_items')})"
                )
            children = enumerate(item)
        else:
            continue
        deepest = depth + 1 > limits.max_json_depth  # then a scalar child is too deep as well
        stack.extend((v, depth + 1, (path, k)) for k, v in children if deepest or isinstance(v, _CONTAINERS))


def _field(where: str, path: Any) -> str:
    """`where` and the keys (`.name`) and indices (`[3]`) of the linked `path` below it."""
    keys = []
    while path is not None:
        path, key = path
        keys.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return where + "".join(reversed(keys))


def image_too_large(width: int, height: int) -> BadRequestError | None:
    limit = current().max_image_pixels
    if width * height <= limit:
        return None
    return BadRequestError(
        f"inputs: an image of {width}x{height} pixels; the limit is {limit} pixels "
        f"({Limits.setting('max_image_pixels')})"
    )


def audio_too_long(seconds: float) -> PayloadTooLargeError:
    limit = current().max_audio_seconds
    return PayloadTooLargeError(
        f"inputs: audio longer than {limit:g} s (at least {seconds:.0f} s); the limit is {limit:g} s "
        f"({Limits.setting('max_audio_seconds')})"
    )
