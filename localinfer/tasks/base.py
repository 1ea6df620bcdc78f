"""What every task is: validated inputs and parameters, the export it needs, and how it runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError

from ..errors import BadRequestError
from ..imports import transformers_ready
from ..payload import format_validation_error
from ..runtime import ExportKind, LoadedModel
from ..text import TextTokenizer

BATCH_SIZE = 32


def lowercase(value: Any) -> Any:
    """Strings lower-cased: parameters the pipelines take in any case."""
    return value.lower() if isinstance(value, str) else value


# `function_to_apply` as the transformers pipelines take it: any case.
FunctionToApply = Annotated[Literal["sigmoid", "softmax", "none"], BeforeValidator(lowercase)]


class Parameters(BaseModel):
    """Base of every task's parameter model: strict types, unknown parameters refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Task(ABC):
    """One task of the contract. Subclasses set `name`, `Inputs` (a type) and `Parameters`."""

    name: ClassVar[str]
    Inputs: ClassVar[Any]
    Parameters: ClassVar[type[Parameters]] = Parameters
    media: ClassVar[str | None] = None  # "audio" or "image": the body is that file's bytes
    # Whether concurrent requests' inputs may be answered by one `run_many` (dynamic batching, localinfer/batching.py).
    batches: ClassVar[bool] = False

    def __init__(self) -> None:
        self._inputs = TypeAdapter(self.Inputs)

    def validate(self, inputs: Any, parameters: dict[str, Any]) -> tuple[Any, Parameters]:
        """Inputs and parameters checked against the contract; a 400 naming the field otherwise."""
        try:
            checked_inputs = self._inputs.validate_python(inputs, strict=True)
        except ValidationError as exc:
            raise BadRequestError(format_validation_error(exc, "inputs")) from None
        try:
            checked_parameters = self.Parameters.model_validate(parameters)
        except ValidationError as exc:
            raise BadRequestError(format_validation_error(exc, "parameters")) from None
        return checked_inputs, checked_parameters

    @abstractmethod
    def export_kind(self, folder: Path) -> ExportKind:
        """How optimum exports a model of this task (and which PyTorch class runs it)."""

    @abstractmethod
    def run(self, model: LoadedModel, inputs: Any, parameters: Any) -> Any:
        """The contract's JSON answer for validated inputs and parameters."""

    def run_many(self, model: LoadedModel, inputs: list[Any], parameters: Any) -> list[Any]:
        """The answers to several requests' validated inputs (same parameters), each what `run` answers it alone,
        from one `run` over all their items. For tasks whose `run` takes a list and answers one result per item;
        `single` says what a single (not list) input answers."""
        lists = [given if isinstance(given, list) else [given] for given in inputs]
        results = self.run(model, [item for items in lists for item in items], parameters)
        answers, start = [], 0
        for given, items in zip(inputs, lists, strict=True):
            mine = results[start : start + len(items)]
            start += len(items)
            answers.append(mine if isinstance(given, list) else self.single(mine))
        return answers

    def single(self, results: list[Any]) -> Any:
        """A single input's answer from `run`'s answer to the one-item list of it."""
        return results[0]


def run_stacked(
    model: LoadedModel, feeds: list[dict[str, np.ndarray]], outputs: tuple[str, ...]
) -> list[dict[str, np.ndarray]]:
    """Each item's outputs (its batch axis of one kept) from runs over items stacked on the batch axis: items whose
    arrays have equal shapes run together, BATCH_SIZE at a time, and none is padded, so each answers as alone."""
    shapes: dict[tuple, list[int]] = {}
    for index, item in enumerate(feeds):
        shapes.setdefault(tuple(sorted((name, array.shape) for name, array in item.items())), []).append(index)
    results: list[dict[str, np.ndarray]] = [{}] * len(feeds)
    for indices in shapes.values():
        for start in range(0, len(indices), BATCH_SIZE):
            chunk = indices[start : start + BATCH_SIZE]
            stacked = {name: np.concatenate([feeds[i][name] for i in chunk]) for name in feeds[chunk[0]]}
            ran = model.runner.run(stacked, outputs)
            for row, index in enumerate(chunk):
                results[index] = {name: value[row : row + 1] for name, value in ran.items()}
    return results


def text_tokenizer(
    model: LoadedModel,
    *,
    max_length: int | None = None,
    lowercase: bool = False,
    truncation: str = "longest_first",
    stride: int = 0,
) -> TextTokenizer:
    """The model's tokenizer, loaded once per model and settings (a tokenizer's settings are its state)."""
    key = ("tokenizer", max_length, lowercase, truncation, stride)
    if key not in model.state:
        model.state[key] = TextTokenizer.from_folder(
            model.files, model.config, max_length=max_length, lowercase=lowercase, truncation=truncation, stride=stride
        )
    return model.state[key]


def task_pipeline(model: LoadedModel, task: str, *parts: str) -> Any:
    """The transformers pipeline of `task` around the loaded PyTorch model (the reference route), built once.

    `parts` are the preprocessors it takes from the model's folder: "tokenizer", "feature_extractor",
    "image_processor".
    """
    key = ("pipeline", task)
    if key not in model.state:
        transformers_ready()
        import transformers

        loaders = {
            "tokenizer": transformers.AutoTokenizer,
            "feature_extractor": transformers.AutoFeatureExtractor,
            "image_processor": transformers.AutoImageProcessor,
        }
        components = {part: loaders[part].from_pretrained(model.files) for part in parts}
        from transformers import pipeline

        model.state[key] = pipeline(task, model=model.runner.model, **components)
    return model.state[key]
