"""conversational: the next reply in a conversation, as the hosted API's (since removed) conversational pipeline.

transformers removed its conversational pipeline (4.42), so this re-creates the contract: a causal model
with a chat template gets the history as chat messages; one without gets the turns joined by its end of
sequence token (the DialoGPT convention); an encoder-decoder chat model (BlenderBot) gets the turns
joined by two spaces, user turns led by a space, as BlenderBot's tokenizer joined them.

`chat_prompt` is the one place a chat template is applied: this task and the OpenAI-compatible chat route
(`localinfer/chat.py`) both call it. The DialoGPT joining is GPT-2's former default chat template (transformers
removed default templates in 4.43); it stays this legacy task's fallback only. The chat route follows its oracle,
the text-generation pipeline, which refuses a model whose tokenizer has no template: a 400 naming the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..decoding.models import CAUSAL_FILES, ENCODER_DECODER_FILES
from ..errors import BadRequestError
from ..runtime import ExportKind, LoadedModel
from ..text import read_json
from .base import Task
from .generation import (
    LengthParameters,
    generate_ids,
    generate_kwargs,
    generation_tokenizer,
    seeded,
    settings_for,
    window,
)
from .text_generation import max_new_tokens


class Conversation(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: Annotated[str, Field(min_length=1)]
    past_user_inputs: list[str] = []
    generated_responses: list[str] = []

    @model_validator(mode="after")
    def _paired(self) -> Conversation:
        if len(self.past_user_inputs) != len(self.generated_responses):
            raise ValueError(
                f"past_user_inputs ({len(self.past_user_inputs)}) and generated_responses "
                f"({len(self.generated_responses)}) must have the same length"
            )
        return self


class ConversationalParameters(LengthParameters):
    """min_length / max_length bound the reply, in tokens."""


def _encoder_decoder(folder: Path) -> bool:
    return bool(read_json(folder / "config.json").get("is_encoder_decoder"))


class Conversational(Task):
    """`{text, past_user_inputs, generated_responses}` answers `{generated_text, conversation, warnings}`."""

    name = "conversational"
    Inputs = Conversation
    Parameters = ConversationalParameters

    def export_kind(self, folder: Path) -> ExportKind:
        if _encoder_decoder(folder):
            return ExportKind("text2text-generation-with-past", sessions=ENCODER_DECODER_FILES)
        return ExportKind("text-generation-with-past", sessions=CAUSAL_FILES)

    def run(self, model: LoadedModel, inputs: Conversation, parameters: ConversationalParameters) -> dict:
        tokenizer = generation_tokenizer(model)
        encoder_decoder = model.kind.task.startswith("text2text")
        new_tokens = max_new_tokens(model, parameters.max_length)
        ids, warnings = build_prompt(tokenizer, inputs, encoder_decoder, new_tokens, window(model, tokenizer))
        kwargs = generate_kwargs(parameters)
        kwargs["max_new_tokens"] = new_tokens
        if parameters.min_length is not None:
            kwargs["min_new_tokens"] = parameters.min_length
        if model.runner.backend == "torch":  # the reference route: the PyTorch model's `generate`
            output = self._torch_generate(model, ids, kwargs, parameters.seed)
        else:
            settings = settings_for(model, kwargs, self.name, parameters.seed)
            feeds = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
            output = generate_ids(model, ids, settings, encoder_feeds=feeds if encoder_decoder else None)
        reply_ids = output[0] if encoder_decoder else output[0][len(ids) :]
        reply = tokenizer.decode(reply_ids, skip_special_tokens=True).strip()
        return {
            "generated_text": reply,
            "conversation": {
                "past_user_inputs": [*inputs.past_user_inputs, inputs.text],
                "generated_responses": [*inputs.generated_responses, reply],
            },
            "warnings": warnings,
        }

    @staticmethod
    def _torch_generate(model: LoadedModel, ids: list[int], kwargs: dict[str, Any], seed: int | None) -> list:
        import torch

        input_ids = torch.tensor([ids])
        with seeded(seed), torch.inference_mode():
            output = model.runner.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
            )
        return output.tolist()


def turns(conversation: Conversation) -> list[tuple[str, str]]:
    """(role, text) of every turn, oldest first, ending with the new user text."""
    history = []
    for user, reply in zip(conversation.past_user_inputs, conversation.generated_responses, strict=True):
        history += [("user", user), ("assistant", reply)]
    return [*history, ("user", conversation.text)]


def build_prompt(
    tokenizer: Any, conversation: Conversation, encoder_decoder: bool, new_tokens: int, window: int | None
) -> tuple[list[int], list[str]]:
    """The prompt's input ids and warnings; the oldest turns are dropped to fit the model's `window`."""
    if encoder_decoder:
        text = "  ".join((" " + t if role == "user" else t) for role, t in turns(conversation))
        ids = tokenizer(text)["input_ids"]
        room = window
    elif tokenizer.chat_template:
        ids = chat_prompt(tokenizer, [{"role": role, "content": t} for role, t in turns(conversation)])
        room = window - new_tokens if window is not None else None
    else:
        eos = tokenizer.eos_token or ""
        ids = tokenizer("".join(t + eos for _, t in turns(conversation)), add_special_tokens=False)["input_ids"]
        room = window - new_tokens if window is not None else None
    warnings = []
    if room is not None and room > 0 and len(ids) > room:
        warnings.append(f"Conversation history truncated: kept its last {room} of {len(ids)} tokens")
        ids = ids[-room:]
    return ids, warnings


def chat_prompt(tokenizer: Any, messages: list[dict[str, str]], model_id: str = "this model") -> list[int]:
    """The input ids of chat messages through the tokenizer's chat template, as TextGenerationPipeline.preprocess
    (transformers 4.57, pipelines/text_generation.py) applies it: a conversation ending with an assistant message is
    continued (`continue_final_message`), any other gets the generation prompt. A tokenizer without a template, or a
    template that refuses the messages (its `raise_exception`), is a 400."""
    if not tokenizer.chat_template:
        raise BadRequestError(
            f"{model_id} has no chat template (its tokenizer_config.json sets no `chat_template`): chat messages "
            "need one; send a prompt to text-generation instead"
        )
    from jinja2 import TemplateError

    continue_final = messages[-1]["role"] == "assistant"
    try:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=not continue_final, continue_final_message=continue_final, tokenize=True
        )
    except (TemplateError, ValueError) as exc:
        raise BadRequestError(f"messages: {model_id}'s chat template refuses them: {exc}") from None
    return list(ids)
