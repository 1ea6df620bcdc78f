"""feature-extraction: sentence embeddings for sentence-transformers models, token features otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from ..runtime import ExportKind, LoadedModel
from ..text import run_tokenized
from .base import BATCH_SIZE, Task, text_tokenizer
from .embeddings import embedding_export_kind, sentence_embeddings


class FeatureExtraction(Task):
    """A str answers one vector; a non-empty list answers one per item.

    sentence-transformers models answer the pooled (and, where the modules say so, normalised)
    sentence embedding; other models answer what the transformers pipeline answers: the
    token features [1][tokens][hidden] of each input.
    """

    name = "feature-extraction"
    batches = True
    Inputs = str | Annotated[list[str], Field(min_length=1)]

    def export_kind(self, folder: Path) -> ExportKind:
        return embedding_export_kind(folder)

    def run(self, model: LoadedModel, inputs: str | list[str], parameters: Any) -> Any:
        texts = [inputs] if isinstance(inputs, str) else inputs
        if model.kind.library == "sentence_transformers":
            vectors = sentence_embeddings(model, texts).tolist()
        else:
            vectors = token_features(model, texts)
        return vectors[0] if isinstance(inputs, str) else vectors


def token_features(model: LoadedModel, texts: list[str]) -> list[Any]:
    """Each text's last hidden state without padding, shaped [1][tokens][hidden] like the pipeline's."""
    tokenizer = text_tokenizer(model)

    def run(feeds: dict[str, np.ndarray]) -> list[Any]:
        hidden = model.runner.run(feeds)["last_hidden_state"].astype(np.float32)
        return [[row[mask.astype(bool)].tolist()] for row, mask in zip(hidden, feeds["attention_mask"], strict=True)]

    return run_tokenized(tokenizer, texts, run, batch_size=BATCH_SIZE)
