"""text-classification: every label with its score, best first, as the transformers pipeline scores them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..runtime import ExportKind, LoadedModel
from ..scores import apply_function
from ..text import run_tokenized
from .base import BATCH_SIZE, FunctionToApply, Parameters, Task, text_tokenizer


class TextPair(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str
    text_pair: str


class TextClassificationParameters(Parameters):
    top_k: Annotated[int, Field(ge=1)] | None = None
    function_to_apply: FunctionToApply | None = None


def default_function(config: dict[str, Any]) -> str:
    """The pipeline's default: none for regression, sigmoid for multi-label or one label, else softmax."""
    problem = config.get("problem_type")
    labels = len(config.get("id2label") or {0: "LABEL_0", 1: "LABEL_1"})
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or labels == 1:
        return "sigmoid"
    return "softmax"


class TextClassification(Task):
    """A str (or a `{text, text_pair}`) answers `[[{label, score}, ...]]`; a list answers one inner list each."""

    name = "text-classification"
    batches = True
    Inputs = str | TextPair | Annotated[list[str | TextPair], Field(min_length=1)]
    Parameters = TextClassificationParameters

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("text-classification")

    def run(self, model: LoadedModel, inputs: Any, parameters: TextClassificationParameters) -> list[list[dict]]:
        items = inputs if isinstance(inputs, list) else [inputs]
        texts = [item if isinstance(item, str) else (item.text, item.text_pair) for item in items]
        tokenizer = text_tokenizer(model)
        function = parameters.function_to_apply or default_function(model.config)
        id2label = {int(k): v for k, v in (model.config.get("id2label") or {}).items()}

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return list(model.runner.run(feeds)["logits"].astype(np.float32))

        results = []
        for logits in run_tokenized(tokenizer, texts, run, batch_size=BATCH_SIZE):
            scores = apply_function(function, logits)
            ranked = sorted(
                ({"label": id2label.get(i, f"LABEL_{i}"), "score": float(s)} for i, s in enumerate(scores)),
                key=lambda entry: entry["score"],
                reverse=True,
            )
            results.append(ranked[: parameters.top_k] if parameters.top_k else ranked)
        return results

    def single(self, results: list[Any]) -> Any:
        return results  # a single input answers the one-item list too
