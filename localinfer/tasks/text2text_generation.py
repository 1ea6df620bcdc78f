"""text2text-generation, summarization and translation: encoder-decoder models (past key/values on ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from ..errors import BadRequestError
from ..runtime import ExportKind, LoadedModel
from .base import Task
from .generation import LengthParameters, SequencesParameters, generate_kwargs, generation_pipeline, run_pipeline
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

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("text2text-generation-with-past", ort_class="ORTModelForSeq2SeqLM")

    def kwargs(self, model: LoadedModel, parameters: Any) -> dict[str, Any]:
        return generate_kwargs(parameters)

    def run(self, model: LoadedModel, inputs: Any, parameters: Any) -> Any:
        pipe = generation_pipeline(model, self.pipeline_task_for(model, parameters))
        return run_pipeline(pipe, inputs, parameters.seed, truncation=True, **self.kwargs(model, parameters))

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
