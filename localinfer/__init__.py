"""localinfer: Hugging Face Inference API requests answered offline, in-process, on ONNX Runtime."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from .offline import go_offline

go_offline()  # before anything below imports onnxruntime, huggingface_hub or transformers

from .engine import Answer, LocalInference  # noqa: E402
from .errors import (  # noqa: E402
    BadRequestError,
    InferenceError,
    MissingExtraError,
    ModelFailureError,
    ModelLoadingError,
    ModelNotFoundError,
    PayloadTooLargeError,
)

__version__ = "0.1.0"

_default: LocalInference | None = None
_default_lock = threading.Lock()


def default_engine() -> LocalInference:
    """The engine `query` uses, configured from LOCALINFER_MODELS and LOCALINFER_HOME on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = LocalInference()
        return _default


def query(model_id: str, payload: Any, *, task: str | None = None) -> Any:
    """Answer `payload` as the hosted Inference API answers it for `model_id`; raises InferenceError."""
    return default_engine().query(model_id, payload, task=task)


def stream(model_id: str, payload: Any, *, task: str | None = None) -> Iterator[str]:
    """The new text of a text-generation answer for `payload`, piece by piece as tokens are decoded."""
    return default_engine().stream(model_id, payload, task=task)


__all__ = [
    "Answer",
    "BadRequestError",
    "InferenceError",
    "MissingExtraError",
    "LocalInference",
    "ModelFailureError",
    "ModelLoadingError",
    "ModelNotFoundError",
    "PayloadTooLargeError",
    "default_engine",
    "query",
    "stream",
]
