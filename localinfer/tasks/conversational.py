"""conversational: the next reply in a conversation, as the hosted API's (since removed) conversational pipeline.

transformers removed its conversational pipeline (4.42), so this re-creates the contract: a causal model
with a chat template gets the history as chat messages; one without gets the turns joined by its end of
sequence token (the DialoGPT convention); an encoder-decoder chat model (BlenderBot) gets the turns
joined by two spaces, user turns led by a space, as BlenderBot's tokenizer joined them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..runtime import ExportKind, LoadedModel
from ..text import read_json
from .base import Task
from .generation import LengthParameters, generate_kwargs, seeded
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
            return ExportKind("text2text-generation-with-past", ort_class="ORTModelForSeq2SeqLM")
        return ExportKind("text-generation-with-past", ort_class="ORTModelForCausalLM")

    def run(self, model: LoadedModel, inputs: Conversation, parameters: ConversationalParameters) -> dict:
        import torch

        if "chat-tokenizer" not in model.state:
            from transformers import AutoTokenizer

            model.state["chat-tokenizer"] = AutoTokenizer.from_pretrained(model.files)
        tokenizer = model.state["chat-tokenizer"]
        new_tokens = max_new_tokens(model, parameters.max_length)
        input_ids, warnings = build_prompt(tokenizer, inputs, model.kind.task.startswith("text2text"), new_tokens)
        kwargs = generate_kwargs(parameters)
        kwargs["max_new_tokens"] = new_tokens
        if parameters.min_length is not None:
            kwargs["min_new_tokens"] = parameters.min_length
        with seeded(parameters.seed), torch.inference_mode():
            output = model.runner.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
            )
        reply_ids = output[0] if model.kind.task.startswith("text2text") else output[0][input_ids.shape[1] :]
        reply = tokenizer.decode(reply_ids, skip_special_tokens=True).strip()
        return {
            "generated_text": reply,
            "conversation": {
                "past_user_inputs": [*inputs.past_user_inputs, inputs.text],
                "generated_responses": [*inputs.generated_responses, reply],
            },
            "warnings": warnings,
        }


def turns(conversation: Conversation) -> list[tuple[str, str]]:
    """(role, text) of every turn, oldest first, ending with the new user text."""
    history = []
    for user, reply in zip(conversation.past_user_inputs, conversation.generated_responses, strict=True):
        history += [("user", user), ("assistant", reply)]
    return [*history, ("user", conversation.text)]


def build_prompt(tokenizer: Any, conversation: Conversation, encoder_decoder: bool, new_tokens: int) -> tuple:
    """The prompt's input ids [1, n] and warnings; the oldest turns are dropped to fit the model's window."""
    import torch

    if encoder_decoder:
        text = "  ".join((" " + t if role == "user" else t) for role, t in turns(conversation))
        ids = tokenizer(text)["input_ids"]
        room = tokenizer.model_max_length
    elif tokenizer.chat_template:
        messages = [{"role": role, "content": t} for role, t in turns(conversation)]
        ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        room = tokenizer.model_max_length - new_tokens
    else:
        eos = tokenizer.eos_token or ""
        ids = tokenizer("".join(t + eos for _, t in turns(conversation)), add_special_tokens=False)["input_ids"]
        room = tokenizer.model_max_length - new_tokens
    warnings = []
    if room > 0 and len(ids) > room:
        warnings.append(f"Conversation history truncated: kept its last {room} of {len(ids)} tokens")
        ids = ids[-room:]
    return torch.tensor([ids]), warnings
