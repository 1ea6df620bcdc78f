"""Chat completions and embeddings on a LocalInference engine: what the OpenAI-compatible routes compute
(`openai_api.py` turns HTTP into these calls and their results into OpenAI's JSON; no HTTP here).

A chat runs a causal model of the text-generation or conversational task: the messages through its chat template
(`tasks/conversational.py: chat_prompt`), then the text-generation task's token-by-token generation
(`TextGeneration.open_stream`) with the text-generation pipeline's settings, so that a greedy answer is the
pipeline's answer to the same messages. Embeddings are the feature-extraction task's answer (the engine's cache,
bounds and usage included) for models whose answer is one vector per input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Field, ValidationError

from .engine import LocalInference
from .errors import BadRequestError
from .limits import applied, check_structure
from .payload import format_validation_error
from .runtime import LoadedModel
from .tasks.base import text_tokenizer
from .tasks.conversational import chat_prompt
from .tasks.embeddings import PoolingConfig
from .tasks.generation import SamplingParameters, generation_tokenizer
from .tasks.text_generation import TextGeneration, TokenStream

CHAT_TASKS = ("text-generation", "conversational")
EMBEDDING_TASKS = ("feature-extraction", "sentence-similarity")


class ChatParameters(SamplingParameters):
    """The generation parameters of a chat, with the text-generation task's bounds. `do_sample` None: the model's
    generation config decides, as in the pipeline (OpenAI's clients send `temperature` to choose)."""

    max_new_tokens: Annotated[int, Field(ge=1, le=250)] | None = None
    stop: list[str] | None = None


@dataclass
class Chat:
    """An opened chat completion: the prompt's token count and a function that opens each choice's generation."""

    model_id: str
    model: LoadedModel
    prompt: list[int]
    parameters: ChatParameters

    def choice(self, index: int, *, logprobs: bool = False) -> TokenStream:
        """Choice `index`'s tokens: a seeded request seeds choice i with seed + i (each choice its own draw)."""
        parameters = self.parameters
        if index and parameters.seed is not None:
            parameters = parameters.model_copy(update={"seed": parameters.seed + index})
        return TextGeneration().open_stream(self.model, self.prompt, parameters, logprobs=logprobs)


def open_chat(
    engine: LocalInference,
    model_id: str,
    messages: list[dict[str, str]],
    parameters: dict[str, Any],
    *,
    wait: bool = True,
) -> Chat:
    """Validate and prepare a chat (the template applied, the first choice checked); raises InferenceError."""
    with applied(engine.limits):
        check_structure(messages, "messages", engine.limits)
        _, handler = engine.resolve(model_id)
        if handler.name not in CHAT_TASKS:
            raise BadRequestError(
                f"{model_id} is a {handler.name} model: chat completions need a causal language model"
            )
        try:
            validated = ChatParameters.model_validate(parameters)
        except ValidationError as exc:
            raise BadRequestError(format_validation_error(exc, "parameters")) from None
        model = engine.preload(model_id, wait=wait)  # a loading model: 503 unless `wait` (emulated loading)
        if not model.kind.task.startswith("text-generation"):
            raise BadRequestError(f"{model_id} is an encoder-decoder: chat completions need a causal language model")
        prompt = chat_prompt(generation_tokenizer(model), messages, model_id)
        chat = Chat(model_id, model, prompt, validated)
        chat.choice(0)  # settings and window checked now, before any answer is sent (nothing runs until iterated)
        return chat


def embed(
    engine: LocalInference, model_id: str, texts: list[str], *, wait: bool = True
) -> tuple[list[list[float]], int]:
    """One vector per text (the feature-extraction answer) and the token count of the texts."""
    _, handler = engine.resolve(model_id)
    if handler.name not in EMBEDDING_TASKS:
        raise BadRequestError(f"{model_id} is a {handler.name} model: embeddings need a feature-extraction model")
    model = engine.preload(model_id, task="feature-extraction", wait=wait)
    if model.kind.library != "sentence_transformers":
        raise BadRequestError(
            f"{model_id} answers feature-extraction with token features, not one vector per input: embeddings need a "
            "sentence-transformers model (one with modules.json)"
        )
    vectors = engine.answer(model_id, {"inputs": texts}, task="feature-extraction").result
    return vectors, token_count(model, texts)


def token_count(model: LoadedModel, texts: list[str]) -> int:
    """The tokens the embedding model read: special tokens included, after its truncation (max_seq_length)."""
    config = PoolingConfig.from_folder(model.folder)
    tokenizer = text_tokenizer(model, max_length=config.max_seq_length, lowercase=config.lowercase)
    return int(sum(int(np.sum(tokenizer.encode([text])["attention_mask"])) for text in texts))
