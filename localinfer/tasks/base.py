"""What every task is: validated inputs and parameters, the export it needs, and how it runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, TypeAdapter, ValidationError

from ..errors import BadRequestError
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
