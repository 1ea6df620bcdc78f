"""zero-shot-classification: an NLI model scores each candidate label as a hypothesis, as the pipeline does."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, field_validator

from ..errors import BadRequestError
from ..runtime import ExportKind, LoadedModel
from ..text import run_batched
from .base import BATCH_SIZE, Parameters, Task, text_tokenizer


class ZeroShotParameters(Parameters):
    candidate_labels: Annotated[list[str], Field(min_length=1, max_length=10)]
    multi_label: bool = False
    hypothesis_template: str = "This example is {}."

    @field_validator("candidate_labels", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:  # "a, b" means ["a", "b"], as the pipeline reads it
        return [label.strip() for label in value.split(",") if label.strip()] if isinstance(value, str) else value

    @field_validator("hypothesis_template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        try:
            filled = value.format("label")
        except (IndexError, KeyError, ValueError):
            filled = value
        if filled == value:
            raise ValueError("must contain {} where the label goes, e.g. 'This example is {}.'")
        return value


def entailment_id(config: dict[str, Any]) -> int:
    """The id of the label whose name starts with "entail" (case-insensitive), as the pipeline finds it."""
    for label, index in (config.get("label2id") or {}).items():
        if label.lower().startswith("entail"):
            return int(index)
    raise BadRequestError(
        "this model cannot do zero-shot classification: none of its labels "
        f"{sorted(config.get('label2id') or {})} is an entailment label (a name starting with 'entail')"
    )


class ZeroShotClassification(Task):
    """A str answers `{sequence, labels, scores}`, labels best first; a list answers one per string."""

    name = "zero-shot-classification"
    batches = True
    Inputs = str | Annotated[list[str], Field(min_length=1)]
    Parameters = ZeroShotParameters

    def export_kind(self, folder: Path) -> ExportKind:
        return ExportKind("text-classification")

    def run(self, model: LoadedModel, inputs: str | list[str], parameters: ZeroShotParameters) -> Any:
        entail = entailment_id(model.config)
        contradiction = -1 if entail == 0 else 0
        labels = parameters.candidate_labels
        # The hypothesis is never truncated, only the sequence: the pipeline's ONLY_FIRST.
        tokenizer = text_tokenizer(model, truncation="only_first")
        sequences = [inputs] if isinstance(inputs, str) else inputs
        pairs = [(s, parameters.hypothesis_template.format(label)) for s in sequences for label in labels]

        def run(batch: list[tuple[str, str]]) -> list[np.ndarray]:
            return list(model.runner.run(tokenizer.encode(batch), ("logits",))["logits"].astype(np.float32))

        logits = np.stack(run_batched(pairs, run, batch_size=BATCH_SIZE, length=lambda p: len(p[0]) + len(p[1])))
        logits = logits.reshape(len(sequences), len(labels), -1)
        answers = []
        for sequence, rows in zip(sequences, logits, strict=True):
            if parameters.multi_label or len(labels) == 1:
                pair = np.exp(rows[:, [contradiction, entail]])
                scores = (pair / pair.sum(-1, keepdims=True))[:, 1]
            else:
                entailment = np.exp(rows[:, entail])
                scores = entailment / entailment.sum(-1, keepdims=True)
            order = list(reversed(scores.argsort()))  # the pipeline's order, ties included
            answers.append(
                {
                    "sequence": sequence,
                    "labels": [labels[i] for i in order],
                    "scores": [float(scores[i]) for i in order],
                }
            )
        return answers[0] if isinstance(inputs, str) else answers
