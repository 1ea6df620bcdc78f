"""text-generation: a causal language model continues the text (localinfer's decoding loop on ONNX Runtime).

Pre- and post-processing follow transformers' TextGenerationPipeline (pipelines/text_generation.py: `preprocess`
with `handle_long_generation="hole"`, `postprocess`); the tokens come from `localinfer.decoding`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from ..decoding.models import CAUSAL_FILES
from ..errors import BadRequestError
from ..runtime import ExportKind, LoadedModel
from .base import Task
from .generation import (
    SequencesParameters,
    generate_ids,
    generate_kwargs,
    generation_pipeline,
    generation_tokenizer,
    run_pipeline,
    settings_for,
    stop_strings,
    window,
)

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
        return ExportKind("text-generation-with-past", sessions=CAUSAL_FILES)

    def request(self, model: LoadedModel, parameters: TextGenerationParameters) -> dict[str, Any]:
        """The `generate` arguments the pipeline would get for these parameters."""
        kwargs = generate_kwargs(parameters)
        kwargs["max_new_tokens"] = max_new_tokens(model, parameters.max_new_tokens)
        if parameters.stop:
            kwargs["stop_strings"] = parameters.stop
        return kwargs

    def run(self, model: LoadedModel, inputs: str | list[str], parameters: TextGenerationParameters) -> Any:
        kwargs = self.request(model, parameters)
        if model.runner.backend == "torch":  # the reference route: the transformers pipeline
            pipe = generation_pipeline(model, "text-generation")
            if parameters.stop:
                kwargs["tokenizer"] = pipe.tokenizer
            # A prompt longer than the window keeps its end, leaving room for the new tokens.
            kwargs["handle_long_generation"] = "hole"
            return run_pipeline(pipe, inputs, parameters.seed, return_full_text=parameters.return_full_text, **kwargs)
        if isinstance(inputs, list):
            return [self.run(model, text, parameters) for text in inputs]
        tokenizer = generation_tokenizer(model)
        settings = settings_for(model, kwargs, self.name, parameters.seed)
        prompt = self.prompt(model, inputs, settings)
        sequences = generate_ids(model, prompt, settings, stop=stop_strings(tokenizer, settings.stop_strings))
        return [{"generated_text": self.text(tokenizer, inputs, prompt, s, parameters)} for s in sequences]

    def stream(self, model: LoadedModel, inputs: str, parameters: TextGenerationParameters) -> Iterator[str]:
        """The new text, piece by piece as tokens are chosen (num_beams 1, one sequence); the pieces joined are
        the new text of `run` with `return_full_text` false."""
        from ..decoding import stream
        from ..decoding.models import step_model

        if parameters.num_return_sequences != 1:
            raise BadRequestError("parameters.num_return_sequences: streaming answers one sequence")
        tokenizer = generation_tokenizer(model)
        settings = settings_for(model, self.request(model, parameters), self.name, parameters.seed)
        if settings.num_beams != 1:
            raise BadRequestError("streaming needs num_beams 1: this model's generation config sets it higher")
        prompt = self.prompt(model, inputs, settings)
        stop = stop_strings(tokenizer, settings.stop_strings)
        tokens = stream(step_model(model.runner.sessions, model.config), prompt, settings, stop=stop)
        return text_pieces(tokenizer, prompt, tokens)

    def prompt(self, model: LoadedModel, text: str, settings: Any) -> list[int]:
        """The prompt's ids (after the settings' prefix); one longer than the window keeps its end and leaves room
        for the new tokens (TextGenerationPipeline.preprocess, handle_long_generation="hole")."""
        tokenizer = generation_tokenizer(model)
        ids = tokenizer((settings.prefix or "") + text, add_special_tokens=False)["input_ids"]
        limit, new_tokens = window(model, tokenizer), settings.max_new_tokens
        if new_tokens is not None and len(ids) + new_tokens > limit:
            keep = limit - new_tokens
            if keep <= 0:
                raise BadRequestError(
                    "parameters: We cannot use `hole` to handle this generation the number of desired tokens exceeds"
                    " the models max length"
                )
            ids = ids[-keep:]
        if not ids:  # as `generate` given no input ids: it starts from the model's bos token
            bos = getattr(settings, "bos_token_id", None)
            bos = model.config.get("bos_token_id") if bos is None else bos
            if not isinstance(bos, int):
                raise BadRequestError("inputs: an empty prompt needs a model with a bos_token_id to start from")
            ids = [bos]
        return ids

    @staticmethod
    def text(tokenizer: Any, text: str, prompt: list[int], sequence: list[int], parameters: Any) -> str:
        """TextGenerationPipeline.postprocess: the decoded sequence less the decoded prompt's length, after the
        prompt text when `return_full_text`."""
        decoded = tokenizer.decode(sequence, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        new = decoded[len(tokenizer.decode(prompt, skip_special_tokens=True, clean_up_tokenization_spaces=True)) :]
        return text + new if parameters.return_full_text else new


# `clean_up_tokenization_spaces` removes the space of " .", " n't", ...: at most 4 characters, led by the space.
_CLEANUP_REACH = 3


def text_pieces(tokenizer: Any, prompt: list[int], tokens: Iterator[int]) -> Iterator[str]:
    """The new text as tokens arrive: the growing sequence decoded, each time its new stable part. A tail that
    decodes to U+FFFD (an incomplete UTF-8 character of byte-level BPE) is held back until it completes, and so is
    a space near the end, which the clean-up of tokenization spaces may still remove."""
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)  # noqa: E731
    start = len(decode(prompt))
    sequence = list(prompt)
    sent = 0
    for token in tokens:
        sequence.append(token)
        new = decode(sequence)[start:]
        stable = len(new.rstrip("\ufffd"))
        space = new.find(" ", max(sent, stable - _CLEANUP_REACH), stable)
        stable = space if space != -1 else stable
        if stable > sent:
            yield new[sent:stable]
            sent = stable
    new = decode(sequence)[start:]
    if len(new) > sent:
        yield new[sent:]
