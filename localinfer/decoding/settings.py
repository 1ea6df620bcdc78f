"""The generation settings of one request, resolved as the `transformers` pipeline of the task and `generate` do.

Precedence (transformers 4.57): `Pipeline.__init__` (pipelines/base.py) starts from the pipeline's
`_default_generation_config`, lets the model's generation config values that differ from the global defaults win
(`_prepare_generation_config(..., use_model_defaults=True)`), honours a non-default `max_length` over the
pipeline's `max_new_tokens` default, then applies the model config's `task_specific_params[task]`. At call time
`generate` runs `_prepare_generation_config` again on that config (model values win over global defaults when the
model's generation config was saved by transformers >= 4.50) and the request's parameters win over everything.
`transformers.GenerationConfig` imports without torch: it is used here as is, with its own validation.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from localinfer.decoding.search import GenerationSettings

from ..imports import transformers_ready

# The pipelines' `_default_generation_config` class attributes (transformers 4.57: pipelines/text_generation.py,
# text2text_generation.py (summarization and translation inherit it), automatic_speech_recognition.py,
# table_question_answering.py), copied: importing the pipeline classes imports torch where it is installed.
PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "text-generation": {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7},
    "text2text-generation": {"max_new_tokens": 256, "num_beams": 4},
    "summarization": {"max_new_tokens": 256, "num_beams": 4},
    "translation": {"max_new_tokens": 256, "num_beams": 4},
    "automatic-speech-recognition": {"max_new_tokens": 256, "num_beams": 5},
    "table-question-answering": {"max_new_tokens": 256},
}

# Generation config values whose processors or modes are not ported: refused rather than ignored.
_UNSUPPORTED = {
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "guidance_scale": None,
    "watermarking_config": None,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "penalty_alpha": None,
    "constraints": None,
    "force_words_ids": None,
    "dola_layers": None,
    "prompt_lookup_num_tokens": None,
    "token_healing": False,
}


def _base_task(task: str) -> str:
    return "translation" if task.startswith("translation") else task


def model_generation_config(folder: Path):
    """The model's generation config as `from_pretrained` loads it: generation_config.json, or (legacy) the one
    `GenerationConfig.from_model_config` derives from config.json (transformers/modeling_utils.py)."""
    transformers_ready()
    from transformers import AutoConfig, GenerationConfig

    if (folder / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(folder)
    return GenerationConfig.from_model_config(AutoConfig.from_pretrained(folder))


def prepare_generation_config(generation_config, model_generation_config, use_model_defaults: bool | None, **kwargs):
    """Port of `GenerationMixin._prepare_generation_config` (transformers/generation/utils.py, 4.57) for a given
    `generation_config` (the pipelines always pass one; the legacy branch for none is not ported). Returns the new
    config and the kwargs that are not generation parameters."""
    from packaging import version

    transformers_ready()
    from transformers import GenerationConfig

    generation_config = copy.deepcopy(generation_config)
    model_version = version.parse(version.parse(model_generation_config.transformers_version).base_version)
    if use_model_defaults is True or (use_model_defaults is None and model_version >= version.parse("4.50.0")):
        global_default = GenerationConfig()
        for key, model_value in model_generation_config.__dict__.items():
            if key.startswith("_") or key == "transformers_version":  # metadata
                continue
            if key == "cache_implementation" and model_value == "hybrid":
                continue
            default_value = getattr(global_default, key, None)
            if getattr(generation_config, key, None) == default_value and model_value != default_value:
                setattr(generation_config, key, model_value)
        if generation_config.temperature == 0.0:
            generation_config.do_sample = False
    else:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            if getattr(generation_config, key) is None:
                setattr(generation_config, key, getattr(model_generation_config, key))
    model_kwargs = generation_config.update(**kwargs)
    return generation_config, model_kwargs


def pipeline_generation_config(model_generation_config, model_config: dict, task: str):
    """The `generation_config` a pipeline of `task` builds in `Pipeline.__init__` (pipelines/base.py), and its
    `prefix` (the model config's, or the task's `task_specific_params` prefix)."""
    transformers_ready()
    from transformers import GenerationConfig

    default = GenerationConfig(**PIPELINE_DEFAULTS.get(_base_task(task), {}))
    config, _ = prepare_generation_config(default, model_generation_config, use_model_defaults=True)
    if (
        default.max_new_tokens is not None
        and config.max_new_tokens == default.max_new_tokens
        and config.max_length is not None
        and config.max_length != 20  # the global default
    ):
        config.max_new_tokens = None
    prefix = model_config.get("prefix")
    task_params = (model_config.get("task_specific_params") or {}).get(task)
    if task_params is not None:
        task_params = dict(task_params)
        if "prefix" in task_params:
            prefix = task_params.pop("prefix")
        config.update(**task_params)
    return config, prefix


def resolve_settings(
    request: dict[str, Any], model_folder: Path | dict, *, task: str, model_config: dict | None = None
) -> GenerationSettings:
    """The settings `generate` runs with when the `task` pipeline is called with `request` (generate keyword
    arguments, plus `seed`), for the model in `model_folder` (or a generation-config dict, with the model's
    config.json as `model_config`)."""
    transformers_ready()
    from transformers import AutoConfig, GenerationConfig

    if isinstance(model_folder, dict):
        config_dict = dict(model_config or {})
        model_gc = GenerationConfig.from_dict(dict(model_folder))
        auto_config = None
    else:
        folder = Path(model_folder)
        config_dict = json.loads((folder / "config.json").read_text())
        model_gc = model_generation_config(folder)
        auto_config = AutoConfig.from_pretrained(folder)
    request = dict(request)
    seed = request.pop("seed", None)
    pipeline_config, prefix = pipeline_generation_config(model_gc, config_dict, task)
    config, unused = prepare_generation_config(pipeline_config, model_gc, None, **request)
    if unused:
        raise ValueError(f"not generation parameters: {', '.join(sorted(unused))}")
    if auto_config is not None:
        max_positions = getattr(auto_config, "max_position_embeddings", None)
    else:
        max_positions = config_dict.get("max_position_embeddings")
    return settings_from_config(
        config,
        is_encoder_decoder=bool(config_dict.get("is_encoder_decoder", False)),
        max_position_embeddings=max_positions,
        max_length_is_default=request.get("max_length") is None,
        prefix=prefix,
        seed=seed,
    )


def settings_from_config(
    config,
    *,
    is_encoder_decoder: bool,
    max_position_embeddings: int | None,
    max_length_is_default: bool,
    prefix: str | None = None,
    seed: int | None = None,
) -> GenerationSettings:
    """The settings of a final `GenerationConfig` (as `generate` holds it after `_prepare_generation_config`), with
    the special tokens `_prepare_special_tokens` (generation/utils.py) derives: pad falls back to eos, the decoder
    start to bos. `forced_decoder_ids` is left out, as `generate` ignores it: only Whisper's `generate` reads it,
    to build its decoder prompt (`_retrieve_init_tokens`, with the language and task), which its caller passes to
    `search.generate` as the prompt."""
    transformers_ready()
    from transformers.generation.configuration_utils import GenerationMode

    for key, default in _UNSUPPORTED.items():
        if getattr(config, key, default) not in (default, None):
            raise ValueError(f"generation parameter {key}={getattr(config, key)!r} is not supported")
    mode = config.get_generation_mode()
    supported = (
        GenerationMode.GREEDY_SEARCH,
        GenerationMode.SAMPLE,
        GenerationMode.BEAM_SEARCH,
        GenerationMode.BEAM_SAMPLE,
    )
    if mode not in supported:
        raise ValueError(f"generation mode {mode.value} is not supported")
    eos = config.eos_token_id
    eos = [eos] if isinstance(eos, int) else eos
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else None)
    start = config.decoder_start_token_id if config.decoder_start_token_id is not None else config.bos_token_id
    return GenerationSettings(
        max_length=config.max_length,
        max_new_tokens=config.max_new_tokens,
        min_length=config.min_length,
        min_new_tokens=config.min_new_tokens,
        max_length_is_default=max_length_is_default,
        max_position_embeddings=max_position_embeddings,
        max_time=config.max_time,
        do_sample=bool(config.do_sample),
        num_beams=config.num_beams,
        num_return_sequences=config.num_return_sequences,
        early_stopping=config.early_stopping,
        length_penalty=config.length_penalty,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        min_p=config.min_p,
        typical_p=config.typical_p,
        epsilon_cutoff=config.epsilon_cutoff,
        eta_cutoff=config.eta_cutoff,
        repetition_penalty=config.repetition_penalty,
        no_repeat_ngram_size=config.no_repeat_ngram_size,
        bad_words_ids=config.bad_words_ids,
        sequence_bias=config.sequence_bias,
        forced_bos_token_id=config.forced_bos_token_id,
        forced_eos_token_id=config.forced_eos_token_id,
        remove_invalid_values=bool(config.remove_invalid_values),
        exponential_decay_length_penalty=config.exponential_decay_length_penalty,
        suppress_tokens=config.suppress_tokens,
        begin_suppress_tokens=config.begin_suppress_tokens,
        renormalize_logits=bool(config.renormalize_logits),
        stop_strings=config.stop_strings,
        bos_token_id=config.bos_token_id,
        eos_token_id=eos,
        pad_token_id=pad,
        decoder_start_token_id=start if is_encoder_decoder else None,
        is_encoder_decoder=is_encoder_decoder,
        prefix=prefix,
        seed=seed,
    )
