"""sentence-similarity: cosine similarity of a source sentence with each of the others."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..runtime import ExportKind, LoadedModel
from .base import Task
from .embeddings import embedding_export_kind, l2_normalize, sentence_embeddings


class SentenceSimilarityInputs(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    source_sentence: str
    sentences: Annotated[list[str], Field(min_length=1)]


class SentenceSimilarity(Task):
    """`{"source_sentence", "sentences"}` answers one float per sentence, as sentence_transformers.util.cos_sim."""

    name = "sentence-similarity"
    batches = True
    Inputs = SentenceSimilarityInputs

    def export_kind(self, folder: Path) -> ExportKind:
        return embedding_export_kind(folder)

    def run(self, model: LoadedModel, inputs: SentenceSimilarityInputs, parameters: Any) -> list[float]:
        vectors = l2_normalize(sentence_embeddings(model, [inputs.source_sentence, *inputs.sentences]))
        return (vectors[1:] @ vectors[0]).astype(np.float32).tolist()

    def run_many(self, model: LoadedModel, inputs: list[SentenceSimilarityInputs], parameters: Any) -> list[Any]:
        """Every request's sentences embedded together, then each request's similarities as `run` computes them."""
        groups = [[given.source_sentence, *given.sentences] for given in inputs]
        vectors = l2_normalize(sentence_embeddings(model, [text for group in groups for text in group]))
        answers, start = [], 0
        for group in groups:
            mine = vectors[start : start + len(group)]
            start += len(group)
            answers.append((mine[1:] @ mine[0]).astype(np.float32).tolist())
        return answers
