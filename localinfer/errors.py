"""The error hierarchy: each error knows its HTTP status and the JSON body the hosted API answers."""

from __future__ import annotations

from typing import Any


class InferenceError(Exception):
    """Base of every error `query()` raises. `status` is the HTTP status, `body` the JSON answer."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.extra = extra

    @property
    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


class BadRequestError(InferenceError):
    """400: the payload, its inputs or a parameter is invalid."""

    status = 400


class ModelNotFoundError(InferenceError):
    """404: the model id resolves to nothing local."""

    status = 404


class PayloadTooLargeError(InferenceError):
    """413: the request body is larger than allowed."""

    status = 413


class ModelLoadingError(InferenceError):
    """503: the model is loading; `estimated_time` is the seconds still expected."""

    status = 503

    def __init__(self, model_id: str, estimated_time: float) -> None:
        super().__init__(f"Model {model_id} is currently loading", estimated_time=float(estimated_time))
        self.estimated_time = float(estimated_time)


class ModelFailureError(InferenceError):
    """500: the model or its export failed on valid input."""

    status = 500


class MissingExtraError(InferenceError):
    """500: this install lacks what the request needs (the export side, or an optional dependency)."""

    status = 500


# The packages only the export side (`localinfer[export]`) installs.
EXPORT_PACKAGES = ("torch", "optimum", "onnx", "onnx_ir", "sentence_transformers")


def export_extra_missing(what: str, exc: ModuleNotFoundError) -> MissingExtraError:
    """The error for `what` needing a package of the export side on a runtime-only install."""
    package = (exc.name or "?").split(".")[0]
    return MissingExtraError(
        f"{what} needs {package}, which this runtime-only install lacks: install 'localinfer[export]', "
        "or export on a machine that has it (`localinfer export MODEL --out DIR`) and use DIR here"
    )
