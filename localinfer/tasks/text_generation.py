"""text-generation: a causal language model continues the text (with past key/values on ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from ..runtime import ExportKind, LoadedModel
from .base import Task
from .generation import SequencesParameters, generate_kwargs, generation_pipeline, run_pipeline

# When neither the request nor the model's generation config says how many tokens to add.
DEFAULT_MAX_NEW_TOKENS = 20


class TextGenerationParameters(SequencesParameters):
    max_new_tokens: Annotated[int, Field(ge=0, le=250)] | None = None
    return_full_text: bool = True
    do_sample: bool = True  # the contract's default
    stop: list[str] | None = None  # stop sequences, as huggingface_hub.InferenceClient sends them


def max_new_tokens(model: LoadedModel, requested: int | None) -> int:
    """The request's, else the model's generation config's, else DEFAULT_MAX_NEW_TOKENS."""
    if requested is not None:
        return requested
    if "default-max-new-tokens" not in model.state:
        from ..text import read_json

        config = read_json(model.folder / "generation_config.json")
        model.state["default-max-new-tokens"] = config.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
    return model.state["default-max-new-tokens"]


class TextGeneration(Task):
    """A str answers `[{"generated_text"}]`, one per returned sequence; a list answers one such list each."""

    name = "text-generation"
    Inputs = str | Annotated[list[str], Field(min_length=1)]
    Parameters = TextGenerationParameters

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("text-generation-with-past", ort_class="ORTModelForCausalLM")

    def run(self, model: LoadedModel, inputs: str | list[str], parameters: TextGenerationParameters) -> Any:
        pipe = generation_pipeline(model, "text-generation")
        kwargs = generate_kwargs(parameters)
        kwargs["max_new_tokens"] = max_new_tokens(model, parameters.max_new_tokens)
        if parameters.stop:
            kwargs.update(stop_strings=parameters.stop, tokenizer=pipe.tokenizer)
        # A prompt longer than the window keeps its end, leaving room for the new tokens.
        kwargs["handle_long_generation"] = "hole"
        return run_pipeline(pipe, inputs, parameters.seed, return_full_text=parameters.return_full_text, **kwargs)
