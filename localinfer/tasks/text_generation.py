"""text-generation: a causal language model continues the text (localinfer's decoding loop on ONNX Runtime).

Pre- and post-processing follow transformers' TextGenerationPipeline (pipelines/text_generation.py: `preprocess`
with `handle_long_generation="hole"`, `postprocess`); the tokens come from `localinfer.decoding`.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from ..decoding.models import CAUSAL_FILES
from ..decoding.search import GeneratedToken
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
    # TGI's: answer `details` (finish reason, the tokens with ids, texts and log-probabilities, the seed)
    details: bool = False
    decoder_input_details: bool = False

    @field_validator("decoder_input_details")
    @classmethod
    def _no_prefill(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "the prompt tokens' log-probabilities (TGI's prefill) are not computed: the exported decoder answers "
                "the logits of the last position only"
            )
        return value


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
        if model.runner.backend == "torch" and parameters.details:
            raise BadRequestError("parameters.details: answered on ONNX Runtime only, not on the PyTorch route")
        if model.runner.backend == "torch":  # the reference route: the transformers pipeline
            pipe = generation_pipeline(model, "text-generation")
            if parameters.stop:
                kwargs["tokenizer"] = pipe.tokenizer
            # A prompt longer than the window keeps its end, leaving room for the new tokens.
            kwargs["handle_long_generation"] = "hole"
            return run_pipeline(pipe, inputs, parameters.seed, return_full_text=parameters.return_full_text, **kwargs)
        if isinstance(inputs, list):
            return [self.run(model, text, parameters) for text in inputs]
        if parameters.details:
            return [self.detailed(model, inputs, parameters)]
        tokenizer = generation_tokenizer(model)
        settings = settings_for(model, kwargs, self.name, parameters.seed)
        prompt = self.prompt(model, inputs, settings)
        sequences = generate_ids(model, prompt, settings, stop=stop_strings(tokenizer, settings.stop_strings))
        return [{"generated_text": self.text(tokenizer, inputs, prompt, s, parameters)} for s in sequences]

    def stream(self, model: LoadedModel, inputs: str, parameters: TextGenerationParameters) -> Iterator[str]:
        """The new text, piece by piece as tokens are chosen (num_beams 1, one sequence); the pieces joined are
        the new text of `run` with `return_full_text` false."""
        return (text for _, text in self.open_stream(model, inputs, parameters).tokens if text)

    def open_stream(
        self, model: LoadedModel, inputs: str | list[int], parameters: Any, *, logprobs: bool = False
    ) -> TokenStream:
        """One sequence decoded token by token (num_beams 1) from a prompt (text, or token ids such as a chat
        template's), each token with its piece of the new text. Sampling without a seed draws one, so that it can
        be reported (TGI's `details.seed`). Validated before the first token: a refusal raises here."""
        from ..decoding import stream_tokens
        from ..decoding.models import step_model

        if getattr(parameters, "num_return_sequences", 1) != 1:
            raise BadRequestError("parameters.num_return_sequences: streaming answers one sequence")
        if model.runner.backend != "onnx":
            raise BadRequestError("token by token generation runs on ONNX Runtime, not on the PyTorch route")
        tokenizer = generation_tokenizer(model)
        settings = settings_for(model, self.request(model, parameters), self.name, parameters.seed)
        if settings.num_beams != 1:
            raise BadRequestError("streaming needs num_beams 1: this model's generation config sets it higher")
        if settings.do_sample and settings.seed is None:
            settings = dataclasses.replace(settings, seed=secrets.randbits(63))
        if isinstance(inputs, str):
            prompt = self.prompt(model, inputs, settings)
        else:
            prompt = list(inputs)
            limit = window(model, tokenizer)
            if limit is not None and len(prompt) + (settings.max_new_tokens or 0) > limit:
                raise BadRequestError(
                    f"the prompt is {len(prompt)} tokens and {settings.max_new_tokens} more are asked for: the "
                    f"model's window is {limit} tokens"
                )
        stop = stop_strings(tokenizer, settings.stop_strings)
        tokens = stream_tokens(
            step_model(model.runner.sessions, model.config), prompt, settings, stop=stop, logprobs=logprobs
        )
        seed = settings.seed if settings.do_sample else None
        return TokenStream(prompt, seed, token_texts(tokenizer, prompt, tokens), frozenset(tokenizer.all_special_ids))

    def detailed(self, model: LoadedModel, text: str, parameters: TextGenerationParameters) -> dict[str, Any]:
        """TGI's answer with `details`: the generated text (as `run` answers it) and how it was generated."""
        opened = self.open_stream(model, text, parameters, logprobs=True)
        tokens = list(opened.tokens)
        sequence = opened.prompt + [token.id for token, _ in tokens]
        generated = self.text(generation_tokenizer(model), text, opened.prompt, sequence, parameters)
        return {"generated_text": generated, "details": opened.details(tokens)}

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


@dataclass
class TokenStream:
    """An opened generation: its prompt ids, the seed it samples with (None when greedy), and its tokens, each with
    its piece of the new text (pieces may be empty; they join to the new text)."""

    prompt: list[int]
    seed: int | None
    tokens: Iterator[tuple[GeneratedToken, str]]
    special_ids: frozenset[int]

    def token_json(self, token: GeneratedToken, text: str) -> dict[str, Any]:
        """A token as TGI answers it (`details.tokens[i]`, a stream event's `token`)."""
        return {"id": token.id, "text": text, "logprob": token.logprob, "special": token.id in self.special_ids}

    def details(self, tokens: list[tuple[GeneratedToken, str]]) -> dict[str, Any]:
        """TGI's `details` of a finished generation (no prefill: see `decoder_input_details`)."""
        return {
            "finish_reason": tokens[-1][0].finish_reason if tokens else "length",
            "generated_tokens": len(tokens),
            "seed": self.seed,
            "prefill": [],
            "tokens": [self.token_json(token, text) for token, text in tokens],
        }


# `clean_up_tokenization_spaces` removes the space of " .", " n't", ...: at most 4 characters, led by the space.
_CLEANUP_REACH = 3


class TextIncrements:
    """The new text as tokens arrive: the growing sequence decoded, each time its new stable part. A tail that
    decodes to U+FFFD (an incomplete UTF-8 character of byte-level BPE) is held back until it completes, and so is
    a space near the end, which the clean-up of tokenization spaces may still remove. Special tokens add no text
    (decoded with `skip_special_tokens`, as the answer's text is)."""

    def __init__(self, tokenizer: Any, prompt: list[int]) -> None:
        self._decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
        self._start = len(self._decode(prompt))
        self._sequence = list(prompt)
        self._sent = 0

    def add(self, token: int) -> str:
        """The text that `token` makes stable (possibly empty)."""
        self._sequence.append(token)
        new = self._decode(self._sequence)[self._start :]
        stable = len(new.rstrip("\ufffd"))
        space = new.find(" ", max(self._sent, stable - _CLEANUP_REACH), stable)
        stable = space if space != -1 else stable
        if stable <= self._sent:
            return ""
        piece, self._sent = new[self._sent : stable], stable
        return piece

    def rest(self) -> str:
        """What is still held back, once no token follows."""
        new = self._decode(self._sequence)[self._start :]
        piece, self._sent = new[self._sent :], len(new)
        return piece


def text_pieces(tokenizer: Any, prompt: list[int], tokens: Iterator[int]) -> Iterator[str]:
    """The new text in non-empty pieces as tokens arrive (see `TextIncrements`)."""
    increments = TextIncrements(tokenizer, prompt)
    for token in tokens:
        piece = increments.add(token)
        if piece:
            yield piece
    rest = increments.rest()
    if rest:
        yield rest


def token_texts(
    tokenizer: Any, prompt: list[int], tokens: Iterable[GeneratedToken]
) -> Iterator[tuple[GeneratedToken, str]]:
    """Each token with its piece of the new text, the last (the one with a finish reason) with all that was held
    back: the pieces join to the new text, one per token, as TGI streams them."""
    increments = TextIncrements(tokenizer, prompt)
    for token in tokens:
        piece = increments.add(token.id)
        yield token, piece + increments.rest() if token.finish_reason is not None else piece
