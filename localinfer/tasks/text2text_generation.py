"""text2text-generation, summarization and translation: encoder-decoder models (localinfer's decoding loop).

Pre- and post-processing follow transformers' Text2TextGenerationPipeline and its subclasses
(pipelines/text2text_generation.py: `_parse_and_tokenize`, TranslationPipeline.preprocess, `postprocess`); the
task prefix comes from the config as `Pipeline.__init__` (pipelines/base.py) takes it; the tokens come from
`localinfer.decoding`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from ..decoding.models import ENCODER_DECODER_FILES
from ..errors import BadRequestError
from ..runtime import ExportKind, LoadedModel
from .base import Task
from .generation import (
    LengthParameters,
    SequencesParameters,
    generate_ids,
    generate_kwargs,
    generation_pipeline,
    generation_tokenizer,
    run_pipeline,
    settings_for,
    window,
)
from .text_generation import max_new_tokens

Texts = str | Annotated[list[str], Field(min_length=1)]


class Text2TextParameters(SequencesParameters):
    max_new_tokens: Annotated[int, Field(ge=0, le=250)] | None = None


class SummarizationParameters(LengthParameters, SequencesParameters):
    pass


class TranslationParameters(Text2TextParameters):
    src_lang: str | None = None
    tgt_lang: str | None = None


class _Seq2Seq(Task):
    """An encoder-decoder task; inputs longer than the encoder's window are truncated, not refused."""

    Inputs = Texts
    pipeline_task = "text2text-generation"
    answer_key = "generated_text"

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("text2text-generation-with-past", sessions=ENCODER_DECODER_FILES)

    def kwargs(self, model: LoadedModel, parameters: Any) -> dict[str, Any]:
        return generate_kwargs(parameters)

    def run(self, model: LoadedModel, inputs: Any, parameters: Any) -> Any:
        task = self.pipeline_task_for(model, parameters)
        kwargs = self.kwargs(model, parameters)
        if model.runner.backend == "torch":  # the reference route: the transformers pipeline
            pipe = generation_pipeline(model, task)
            return run_pipeline(pipe, inputs, parameters.seed, truncation=True, **kwargs)
        texts = inputs if isinstance(inputs, list) else [inputs]
        answers = [self.answer(model, task, text, dict(kwargs), parameters.seed) for text in texts]
        # as the pipeline answers: a list of texts with one sequence each gives one record per text
        if isinstance(inputs, list) and all(len(a) == 1 for a in answers):
            return [a[0] for a in answers]
        return answers if isinstance(inputs, list) else answers[0]

    def answer(self, model: LoadedModel, task: str, text: str, kwargs: dict[str, Any], seed: int | None) -> list:
        tokenizer = generation_tokenizer(model)
        src_lang, tgt_lang = kwargs.pop("src_lang", None), kwargs.pop("tgt_lang", None)
        prefix = settings_for(model, kwargs, task, seed).prefix or ""
        feeds = self.encode(model, tokenizer, task, text, prefix, src_lang, tgt_lang)
        if "forced_bos_token_id" in feeds:  # TranslationPipeline passes it from the tokenizer to `generate`
            kwargs["forced_bos_token_id"] = int(np.asarray(feeds.pop("forced_bos_token_id")).reshape(-1)[0])
        settings = settings_for(model, kwargs, task, seed)
        sequences = generate_ids(model, [], settings, encoder_feeds=feeds)
        return [
            {
                self.answer_key: tokenizer.decode(s, skip_special_tokens=True, clean_up_tokenization_spaces=False),
            }
            for s in sequences
        ]

    def encode(
        self,
        model: LoadedModel,
        tokenizer: Any,
        task: str,
        text: str,
        prefix: str,
        src_lang: str | None,
        tgt_lang: str | None,
    ) -> dict[str, np.ndarray]:
        """The encoder's inputs for one text, its prefix put before it (Text2TextGenerationPipeline.
        _parse_and_tokenize, TranslationPipeline.preprocess), truncated to the window (the tokenizer's, else the
        config's, else DEFAULT_WINDOW)."""
        limit = window(model, tokenizer)
        options = {"truncation": True, "return_tensors": "np"}
        if tokenizer.model_max_length >= 1e29:
            options["max_length"] = limit
        if task.startswith("translation") and getattr(tokenizer, "_build_translation_inputs", None):
            if src_lang is None and tgt_lang is None and len(task.split("_")) == 4:
                src_lang, tgt_lang = task.split("_")[1], task.split("_")[3]
            encoded = tokenizer._build_translation_inputs(text, src_lang=src_lang, tgt_lang=tgt_lang, **options)
        else:
            encoded = tokenizer(prefix + text, **options)
        return {k: np.asarray(v) for k, v in encoded.items() if k != "token_type_ids"}

    def pipeline_task_for(self, model: LoadedModel, parameters: Any) -> str:
        return self.pipeline_task


class Text2TextGeneration(_Seq2Seq):
    """A str answers `[{"generated_text"}]`."""

    name = "text2text-generation"
    Parameters = Text2TextParameters

    def kwargs(self, model: LoadedModel, parameters: Text2TextParameters) -> dict[str, Any]:
        return {**generate_kwargs(parameters), "max_new_tokens": max_new_tokens(model, parameters.max_new_tokens)}


class Summarization(_Seq2Seq):
    """A str answers `[{"summary_text"}]`; `min_length` / `max_length` bound the summary in tokens."""

    name = "summarization"
    Parameters = SummarizationParameters
    pipeline_task = "summarization"
    answer_key = "summary_text"

    def kwargs(self, model: LoadedModel, parameters: SummarizationParameters) -> dict[str, Any]:
        kwargs = generate_kwargs(parameters)
        for name in ("min_length", "max_length"):
            if getattr(parameters, name) is not None:
                kwargs[name] = getattr(parameters, name)
        # The pipeline's own default of 256 new tokens would override both the model's default and max_length.
        kwargs["max_new_tokens"] = max_new_tokens(model, None) if parameters.max_length is None else None
        return kwargs


class Translation(Text2TextGeneration):
    """A str answers `[{"translation_text"}]`; `src_lang` / `tgt_lang` for multilingual models.

    A T5 model's task prefix ("translate English to French: ") comes from its config, as the
    translation_xx_to_yy pipeline takes it.
    """

    name = "translation"
    Parameters = TranslationParameters
    answer_key = "translation_text"

    def pipeline_task_for(self, model: LoadedModel, parameters: TranslationParameters) -> str:
        known = [k for k in (model.config.get("task_specific_params") or {}) if k.startswith("translation_")]
        if parameters.src_lang and parameters.tgt_lang:
            wanted = f"translation_{parameters.src_lang}_to_{parameters.tgt_lang}"
            if wanted in known or not known:
                return wanted if known else "translation"
            raise BadRequestError(f"parameters: this model translates {', '.join(known)}, not {wanted}")
        return known[0] if len(known) == 1 else "translation"

    def kwargs(self, model: LoadedModel, parameters: TranslationParameters) -> dict[str, Any]:
        kwargs = super().kwargs(model, parameters)
        known = model.config.get("task_specific_params") or {}
        if not any(k.startswith("translation_") for k in known):  # multilingual: languages go to the tokenizer
            for name in ("src_lang", "tgt_lang"):
                if getattr(parameters, name) is not None:
                    kwargs[name] = getattr(parameters, name)
        return kwargs
