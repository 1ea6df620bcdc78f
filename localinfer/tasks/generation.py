"""What the generation tasks share: sampling parameters, seeding, and the transformers pipeline around the model.

Generation runs through the transformers pipeline of the task, built around optimum's ONNX Runtime model
(whose `generate` feeds past key/values back, one new token per step) or around the PyTorch model: the
pipeline is the contract's oracle, and `generate` is where sampling, repetition penalty, stop strings and
`max_time` are implemented and tested upstream.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import Field, model_validator

from ..errors import BadRequestError
from ..runtime import LoadedModel
from .base import Parameters, task_pipeline

_rng_lock = threading.Lock()


class SamplingParameters(Parameters):
    """The sampling parameters of the contract's generation tasks, with its bounds."""

    top_k: Annotated[int, Field(ge=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=100)] | None = None
    repetition_penalty: Annotated[float, Field(ge=0, le=100)] | None = None
    max_time: Annotated[float, Field(ge=0, le=120)] | None = None
    do_sample: bool | None = None  # None: the model's own generation config decides
    seed: int | None = None


class LengthParameters(SamplingParameters):
    """`min_length` / `max_length` in tokens, 1-500, the first not above the second."""

    min_length: Annotated[int, Field(ge=1, le=500)] | None = None
    max_length: Annotated[int, Field(ge=1, le=500)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> LengthParameters:
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length ({self.min_length}) must not exceed max_length ({self.max_length})")
        return self


class SequencesParameters(SamplingParameters):
    """Tasks that may answer several sequences."""

    num_return_sequences: Annotated[int, Field(ge=1, le=10)] = 1


def generate_kwargs(parameters: SamplingParameters) -> dict[str, Any]:
    """transformers `generate` arguments. A temperature of 0 means always the best token (no sampling)."""
    sequences = getattr(parameters, "num_return_sequences", 1)
    kwargs: dict[str, Any] = {"num_return_sequences": sequences}
    sample = parameters.do_sample
    if parameters.temperature == 0:
        sample = False
    if sample is not None:
        kwargs["do_sample"] = sample
    if sample is not False:
        for name in ("temperature", "top_k", "top_p"):
            if getattr(parameters, name) is not None:
                kwargs[name] = getattr(parameters, name)
    if parameters.repetition_penalty is not None:
        kwargs["repetition_penalty"] = parameters.repetition_penalty
    if parameters.max_time is not None:
        kwargs["max_time"] = parameters.max_time
    if sequences > 1 and sample is False:
        raise BadRequestError(
            "parameters.num_return_sequences: more than 1 needs sampling (do_sample true and temperature above 0)"
        )
    return kwargs


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Generation with torch's global random state seeded; one seeded generation at a time."""
    if seed is None:
        yield
        return
    import torch

    with _rng_lock:
        torch.manual_seed(seed)
        yield


def generation_pipeline(model: LoadedModel, task: str) -> Any:
    return task_pipeline(model, task, "tokenizer")


def run_pipeline(pipe: Any, inputs: Any, seed: int | None, **kwargs: Any) -> Any:
    """Call a generation pipeline; what the model or tokenizer refuses is a 400 naming the reason."""
    with seeded(seed):
        try:
            return pipe(inputs, **kwargs)
        except ValueError as exc:
            raise BadRequestError(f"parameters: {exc}") from None
