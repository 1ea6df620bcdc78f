"""Whisper's decoder prompt and generation settings, as `WhisperForConditionalGeneration.generate` builds them for
the automatic-speech-recognition pipeline's call on one window of at most 30 s (short-form, no timestamps).

Ported from transformers/models/whisper/generation_whisper.py (4.57): `_retrieve_init_tokens` (decoder start,
language, task, `<|notimestamps|>`; the language detected as `detect_language` does when the config leaves it open),
`_set_max_new_tokens_and_length`, `generate_with_fallback` (no temperature given: greedy or beam search, unless the
model's generation config asks for sampling), and `_retrieve_logit_processors` (`suppress_tokens` always,
`begin_suppress_tokens` at the first generated position after the prompt: the loop's processors do both, at
`len(prompt)`). The pipeline merges the windows' tokens and decodes them with the tokenizer's `_decode_asr`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localinfer.decoding.models import step_model
from localinfer.decoding.search import GenerationSettings, generate
from localinfer.decoding.settings import (
    model_generation_config,
    pipeline_generation_config,
    prepare_generation_config,
    settings_from_config,
)
from localinfer.imports import transformers_ready

TASK = "automatic-speech-recognition"


@dataclass(frozen=True)
class WhisperPlan:
    """The settings, and the decoder prompt with `None` where the language is to be detected (`language_ids`)."""

    settings: GenerationSettings
    prompt: tuple[int | None, ...]
    language_ids: tuple[int, ...]

    def prompt_for(self, detect: Callable[[int, tuple[int, ...]], int]) -> list[int]:
        """The decoder prompt; `detect(start, language_ids)` answers the language token when it is left open."""
        if None not in self.prompt:
            return list(self.prompt)  # type: ignore[arg-type]
        language = detect(int(self.prompt[0]), self.language_ids)  # type: ignore[arg-type]
        return [language if t is None else t for t in self.prompt]


def whisper_plan(folder: Path) -> WhisperPlan:
    """The settings and decoder prompt of the pipeline's `generate` call for the Whisper model in `folder`."""
    transformers_ready()
    from transformers import AutoConfig

    config_dict = json.loads((folder / "config.json").read_text())
    model_gc = model_generation_config(folder)
    pipeline_config, _ = pipeline_generation_config(model_gc, config_dict, TASK)
    config, _ = prepare_generation_config(pipeline_config, model_gc, None)
    if getattr(config, "return_timestamps", False):
        raise ValueError("return_timestamps (in the model's generation config) is not supported")
    # `generate_with_fallback` with no temperature: do_sample False, temperature 1.0; then `GenerationMixin.generate`
    # prepares that config again, so the model's own do_sample and temperature (when not the defaults) come back.
    config.do_sample = False
    config.temperature = 1.0
    config, _ = prepare_generation_config(config, model_gc, None)
    prompt, language_ids = _init_tokens(config, config_dict)
    # `_set_max_new_tokens_and_length` (its `max_length` branch computes a value it never stores: nothing to port)
    max_target = config_dict.get("max_target_positions", 448)
    if config.max_new_tokens is not None and config.max_new_tokens + len(prompt) > max_target:
        raise ValueError(
            f"max_new_tokens ({config.max_new_tokens}) and the decoder prompt ({len(prompt)} tokens) exceed "
            f"max_target_positions ({max_target})"
        )
    settings = settings_from_config(
        config,
        is_encoder_decoder=True,
        max_position_embeddings=getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", None),
        max_length_is_default=True,  # the pipeline passes max_length inside its generation config, never alone
    )
    return WhisperPlan(settings=settings, prompt=tuple(prompt), language_ids=language_ids)


def _init_tokens(config, config_dict: dict) -> tuple[list[int | None], tuple[int, ...]]:
    """`_retrieve_init_tokens` for one clip, `return_timestamps` off: the prompt, `None` at a language to detect."""
    transformers_ready()
    from transformers.models.whisper.tokenization_whisper import TASK_IDS, TO_LANGUAGE_CODE

    task = getattr(config, "task", None)
    language = getattr(config, "language", None)
    lang_to_id = getattr(config, "lang_to_id", None) or {}
    task_to_id = getattr(config, "task_to_id", None) or {}
    init: list[int | None] = [config.decoder_start_token_id]
    if task is None and language is None:
        forced = getattr(config, "forced_decoder_ids", None) or config_dict.get("forced_decoder_ids")
        if forced and forced[0][0] == 1:
            for i, (position, token) in enumerate(forced, start=1):
                if position != i:
                    raise ValueError(f"forced_decoder_ids {forced} do not follow Whisper's prompt pattern")
                init.append(token)
    language_open = len(init) <= 1 or init[1] is None
    languages = tuple(int(i) for i in lang_to_id.values())
    if language is not None:
        if isinstance(language, (list, tuple)):
            raise ValueError("one language per clip")
        name = language.lower()
        if name in lang_to_id:
            token = name
        elif name in TO_LANGUAGE_CODE:
            token = f"<|{TO_LANGUAGE_CODE[name]}|>"
        elif name in TO_LANGUAGE_CODE.values():
            token = f"<|{name}|>"
        else:
            raise ValueError(f"Unsupported language: {language}")
        if token not in lang_to_id:
            raise ValueError(f"{token} is not in the model's generation_config.lang_to_id")
        _set_language(init, lang_to_id[token])
    elif lang_to_id and language_open:
        _set_language(init, None)  # detected from the audio (`detect_language`)
    if task is not None:
        if task not in TASK_IDS:
            raise ValueError(f"The `{task}` task is not supported. The task should be one of `{TASK_IDS}`")
        init.append(task_to_id[task])  # (its `replace_or_add` after this returns a list it drops: a no-op)
    elif language is not None and task_to_id and not any(t in init for t in task_to_id.values()):
        init.append(task_to_id["transcribe"])
    no_timestamps = getattr(config, "no_timestamps_token_id", None)
    if no_timestamps is not None and init[-1] != no_timestamps:
        init.append(no_timestamps)
    # `None` placeholders of forced_decoder_ids are dropped, except the language to detect
    keep = 1 if language_open and lang_to_id and language is None else None
    init = [t for i, t in enumerate(init) if t is not None or i == keep]
    return init, languages


def _set_language(init: list[int | None], token: int | None) -> None:
    if len(init) > 1:
        init[1] = token
    else:
        init.append(token)


def detect_language(logits: np.ndarray, language_ids: tuple[int, ...]) -> int:
    """`detect_language`: the most likely language token after the decoder start, the other tokens masked."""
    masked = np.full_like(logits, -np.inf)
    ids = np.asarray(language_ids, dtype=np.int64)
    masked[ids] = logits[ids]
    return int(np.argmax(masked))


def decoder_prompt(
    sessions: Mapping[str, object], config: Mapping[str, object], plan: WhisperPlan, features: Mapping[str, np.ndarray]
) -> list[int]:
    """The decoder prompt for one window: the plan's, its language detected from the features when left open."""

    def detect(start: int, languages: tuple[int, ...]) -> int:
        logits = step_model(sessions, config, features).step(np.array([[start]], dtype=np.int64))
        return detect_language(logits[0], languages)

    return plan.prompt_for(detect)


def transcribe_window(
    sessions: Mapping[str, object], config: Mapping[str, object], plan: WhisperPlan, features: Mapping[str, np.ndarray]
) -> list[int]:
    """The tokens `generate` answers for one window of features, over the export's opened sessions
    (`encoder_model.onnx`, `decoder_model_merged.onnx`): the new tokens, without the decoder prompt and without a
    final end-of-text (`_postprocess_outputs` and `generate_with_fallback` cut both)."""
    prompt = decoder_prompt(sessions, config, plan, features)
    tokens = generate(step_model(sessions, config, features), prompt, plan.settings)[0][len(prompt) :]
    if tokens and tokens[-1] in (plan.settings.eos_token_id or ()):
        tokens = tokens[:-1]
    return tokens
