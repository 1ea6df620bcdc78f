"""What the generation tasks share: sampling parameters, the settings and the decoding loop, the tokenizer.

On ONNX Runtime, generation is localinfer's own loop (`localinfer.decoding`) over the exported decoder graphs
(`localinfer.decoding.models`): no torch, no optimum at query time. The request's parameters become the
`generate` arguments that the transformers pipeline of the task would receive, and `resolve_settings` applies
them over the model's generation config as the pipeline and `generate` do. On the PyTorch route (the reference)
the task's transformers pipeline runs around the PyTorch model, with torch's random state seeded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator

from ..errors import BadRequestError
from ..imports import transformers_ready
from ..runtime import LoadedModel
from .base import Parameters, task_pipeline

_rng_lock = threading.Lock()
_settings_lock = threading.Lock()


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


def generation_tokenizer(model: LoadedModel) -> Any:
    """The model's transformers tokenizer (no torch needed), loaded once per model."""
    if "generation-tokenizer" not in model.state:
        transformers_ready()
        from transformers import AutoTokenizer

        model.state["generation-tokenizer"] = AutoTokenizer.from_pretrained(model.files)
    return model.state["generation-tokenizer"]


# The window of a model whose tokenizer and config name none (relative-position models such as T5 and its
# descendants): their checkpoints were trained on 512 tokens, and without a bound 20000 words made ONNX Runtime's
# attention scores outgrow a 4 GB device (a 500 where the arena could not allocate). Text encoders use the same.
DEFAULT_WINDOW = 512


def window(model: LoadedModel, tokenizer: Any) -> int:
    """The model's window in tokens: the tokenizer's `model_max_length`, else the config's positions, else
    DEFAULT_WINDOW."""
    if tokenizer.model_max_length < 1e29:  # transformers' VERY_LARGE_INTEGER when the tokenizer has none
        return int(tokenizer.model_max_length)
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_source_positions", "n_ctx"):
        if isinstance(config.get(name), int):
            return config[name]
    return DEFAULT_WINDOW


def settings_for(model: LoadedModel, request: Mapping[str, Any], task: str, seed: int | None) -> Any:
    """The generation settings for `request` (the pipeline's `generate` arguments) on `model`, seeded."""
    from ..decoding.settings import resolve_settings

    # Resolving reads the model's configs through transformers (~13 ms): once per model, task and request settings.
    known = model.state.setdefault("generation-settings", {})
    key = (task, json.dumps(dict(request), sort_keys=True, default=repr))
    settings = known.get(key)
    if settings is None:
        try:
            settings = resolve_settings(dict(request), model.folder, task=task)
        except ValueError as exc:
            raise BadRequestError(f"parameters: {exc}") from None
        with _settings_lock:
            if len(known) >= 256:  # bounded: requests vary
                known.pop(next(iter(known)))
            known[key] = settings
    return dataclasses.replace(settings, seed=seed) if seed is not None else settings


def generate_ids(
    model: LoadedModel,
    prompt: Sequence[int],
    settings: Any,
    *,
    encoder_feeds: Mapping[str, np.ndarray] | None = None,
    stop: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """The decoding loop's sequences for one prompt: a causal model's prompt ids, or an encoder-decoder's
    encoder inputs (`encoder_feeds`, the decoder starting from its start token)."""
    from ..decoding import generate
    from ..decoding.models import step_model

    step = step_model(model.runner.sessions, model.config, encoder_feeds)
    try:
        return generate(step, [] if encoder_feeds is not None else prompt, settings, stop=stop)
    except ValueError as exc:
        raise BadRequestError(f"parameters: {exc}") from None


def stop_strings(tokenizer: Any, stops: Sequence[str] | str | None) -> Callable[[list[int]], bool] | None:
    """A `stop` callback: True once the new tokens' text holds one of `stops` overlapping the last token, the rule
    of transformers' `StopStringCriteria` (generation/stopping_criteria.py), matched on decoded text."""
    if not stops:
        return None
    stops = [stops] if isinstance(stops, str) else list(stops)

    def stop(new: list[int]) -> bool:
        text = tokenizer.decode(new, clean_up_tokenization_spaces=False)
        before = len(tokenizer.decode(new[:-1], clean_up_tokenization_spaces=False))
        return any(text.find(s, max(0, before - len(s) + 1)) != -1 for s in stops if s)

    return stop
