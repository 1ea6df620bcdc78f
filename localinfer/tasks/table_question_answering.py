"""table-question-answering: TAPAS selects cells (and an aggregator); TAPEX generates the answer.

Both answer `{answer, coordinates, cells, aggregator}`. TAPAS runs its custom ONNX export (see
runtime/tapas.py), one query at a time, with the transformers TapasTokenizer: TAPAS's table encoding
(row, column and rank ids) and its cell decoding exist only there. TAPEX, a BART model, generates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..decoding.models import ENCODER_DECODER_FILES
from ..errors import BadRequestError, InferenceError
from ..imports import transformers_ready
from ..runtime import ExportKind, LoadedModel
from ..text import read_json
from .base import Parameters, Task


class TableQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: Annotated[str, Field(min_length=1)]
    table: Annotated[dict[str, list[str | int | float]], Field(min_length=1)]

    @field_validator("table")
    @classmethod
    def _rectangular(cls, table: dict[str, list]) -> dict[str, list[str]]:
        lengths = {column: len(cells) for column, cells in table.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"all columns must have the same number of cells, got {lengths}")
        if not next(iter(lengths.values())):
            raise ValueError("the table has no rows")
        return {column: [str(cell) for cell in cells] for column, cells in table.items()}


class TableQuestionAnsweringParameters(Parameters):
    padding: bool | Literal["longest", "max_length", "do_not_pad"] = True
    truncation: bool | Literal["drop_rows_to_fit", "do_not_truncate", "longest_first"] | None = None
    sequential: bool = False  # one query per request: sequential and batched inference agree


def _is_tapas(folder: Path) -> bool:
    return read_json(folder / "config.json").get("model_type") == "tapas"


class TableQuestionAnswering(Task):
    """`{query, table}` answers `{answer, coordinates, cells, aggregator}`; a list answers one per item."""

    name = "table-question-answering"
    Inputs = TableQuery | Annotated[list[TableQuery], Field(min_length=1)]
    Parameters = TableQuestionAnsweringParameters

    def export_kind(self, folder: Path) -> ExportKind:
        if _is_tapas(folder):
            return ExportKind("table-question-answering", exporter="tapas")
        return ExportKind("text2text-generation-with-past", sessions=ENCODER_DECODER_FILES)

    def run(self, model: LoadedModel, inputs: Any, parameters: TableQuestionAnsweringParameters) -> Any:
        items = inputs if isinstance(inputs, list) else [inputs]
        if model.kind.exporter == "tapas":
            answers: list = [None] * len(items)
            by_table: dict[str, list[int]] = {}  # queries on one table are encoded (and decoded) together
            for index, item in enumerate(items):
                by_table.setdefault(repr(item.table), []).append(index)
            for indices in by_table.values():
                found = _tapas(model, items[indices[0]].table, [items[i].query for i in indices], parameters)
                for index, answer in zip(indices, found, strict=True):
                    answers[index] = answer
        else:
            answers = [_tapex(model, item, parameters) for item in items]
        return answers if isinstance(inputs, list) else answers[0]


def _tokenizer(model: LoadedModel) -> Any:
    if "table-tokenizer" not in model.state:
        _pandas()  # the TAPAS tokenizer's module needs it
        transformers_ready()
        from transformers import AutoTokenizer

        model.state["table-tokenizer"] = AutoTokenizer.from_pretrained(model.files)
    return model.state["table-tokenizer"]


def _tapas(
    model: LoadedModel,
    table_data: dict[str, list[str]],
    queries: list[str],
    parameters: TableQuestionAnsweringParameters,
) -> list[dict]:
    pd = _pandas()
    tokenizer = _tokenizer(model)
    table = pd.DataFrame(table_data)
    truncation = "drop_rows_to_fit" if parameters.truncation is None else parameters.truncation
    encoded = tokenizer(
        table=table, queries=queries, truncation=truncation, padding=parameters.padding, return_tensors="np"
    )
    feeds = {name: encoded[name].astype("int64") for name in ("input_ids", "attention_mask", "token_type_ids")}
    if feeds["input_ids"].shape[1] > model.config.get("max_position_embeddings", 512):
        raise BadRequestError("inputs.table: too large for the model's window; allow truncation")
    # The TAPAS export takes one query at a time (see runtime/tapas.py).
    names = ("logits", "logits_aggregation")
    rows = [model.runner.run({k: v[i : i + 1] for k, v in feeds.items()}, names) for i in range(len(queries))]
    outputs = {name: np.concatenate([row[name] for row in rows]) for name in names}
    labels = {int(k): v for k, v in (model.config.get("aggregation_labels") or {}).items()}
    aggregate = bool(labels) and bool(model.config.get("num_aggregation_labels"))
    coordinates = [
        _selected_cells(logits, feeds["attention_mask"][i], feeds["token_type_ids"][i])
        for i, logits in enumerate(outputs["logits"])
    ]
    aggregations = outputs["logits_aggregation"].argmax(axis=-1) if aggregate else None
    answers = []
    for index, cells_at in enumerate(coordinates):
        aggregator, prefix = "NONE", ""
        if aggregations is not None:
            aggregator = labels[int(aggregations[index])]
            if int(aggregations[index]) != model.config.get("no_aggregation_label_index"):
                prefix = aggregator + " > "
        cells = [table.iat[coordinate] for coordinate in cells_at]
        answers.append(
            {
                "answer": prefix + ", ".join(cells),
                "coordinates": [list(c) for c in cells_at],
                "cells": cells,
                "aggregator": aggregator,
            }
        )
    return answers


def _selected_cells(
    logits: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray, threshold: float = 0.5
) -> list[tuple[int, int]]:
    """The (row, column) of the cells whose tokens' mean probability exceeds `threshold`, sorted, for one query.

    A numpy port of `TapasTokenizer.convert_logits_to_predictions` (transformers/models/tapas/
    tokenization_tapas.py, with `_get_mean_cell_probs`), which takes torch tensors: a token's probability is the
    sigmoid of its logit, a cell's the mean over its table tokens (segment 1, row and column ids from 1).
    """
    logits = np.maximum(logits, np.float32(-88.7))  # as the tokenizer clips: exp(88.7) is float32's largest
    probabilities = 1 / (1 + np.exp(-logits)) * attention_mask
    # token_type_ids holds, per token: segment, column, row, previous label, column ranks, numeric relations
    segments, columns, rows = token_type_ids[:, 0], token_type_ids[:, 1], token_type_ids[:, 2]
    in_table = (segments == 1) & (columns > 0) & (rows > 0)
    cells, cell_of_token = np.unique(np.stack([rows[in_table], columns[in_table]], axis=1), axis=0, return_inverse=True)
    sums = np.zeros(len(cells))
    np.add.at(sums, cell_of_token.reshape(-1), probabilities[in_table])
    means = sums / np.bincount(cell_of_token.reshape(-1), minlength=len(cells))
    return sorted(
        (int(row) - 1, int(column) - 1) for (row, column), mean in zip(cells, means, strict=True) if mean > threshold
    )


def _pandas() -> Any:
    """pandas, which the TAPAS and TAPEX tokenizers take tables in; a 500 naming the extra when it is missing."""
    try:
        import pandas
    except ImportError:
        raise InferenceError(
            "table-question-answering needs pandas, which is not installed: pip install 'localinfer[tapas]'"
        ) from None
    return pandas


def _tapex(model: LoadedModel, item: TableQuery, parameters: TableQuestionAnsweringParameters) -> dict:
    pd = _pandas()
    tokenizer = _tokenizer(model)
    table = pd.DataFrame(item.table)
    truncation = "do_not_truncate" if parameters.truncation is None else parameters.truncation
    encoded = tokenizer(
        table=table, query=item.query, truncation=truncation, padding=parameters.padding, return_tensors="np"
    )
    if model.runner.backend == "torch":  # the reference route: the PyTorch model's `generate`
        import torch

        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v) for k, v in encoded.items()}
            output = model.runner.model.generate(**tensors, generation_config=_generation_config(model)).tolist()
    else:  # localinfer's decoding loop, with the table-question-answering pipeline's settings
        from .generation import generate_ids, settings_for

        output = generate_ids(
            model, [], settings_for(model, {}, "table-question-answering", None), encoder_feeds=encoded
        )
    answer = tokenizer.decode(output[0], skip_special_tokens=True)
    # TAPEX names no cells: the cells are those whose text is the answer, or one of its comma-separated parts.
    wanted = {answer.strip().lower(), *(part.strip().lower() for part in answer.split(","))} - {""}
    coordinates = [
        [row, col]
        for col, column in enumerate(table.columns)
        for row in range(len(table))
        if str(table.iat[row, col]).strip().lower() in wanted
    ]
    coordinates.sort()
    return {
        "answer": answer,
        "coordinates": coordinates,
        "cells": [table.iat[r, c] for r, c in coordinates],
        "aggregator": "NONE",
    }


def _generation_config(model: LoadedModel) -> Any:
    """The table-question-answering pipeline's: the model's settings over its default of 256 new tokens (the
    PyTorch route; on ONNX Runtime `localinfer.decoding.settings` resolves the same)."""
    if "generation-config" not in model.state:
        transformers_ready()
        from transformers import GenerationConfig

        default = GenerationConfig(max_new_tokens=256)
        config, _ = model.runner.model._prepare_generation_config(generation_config=default, use_model_defaults=True)
        if config.max_new_tokens == 256 and config.max_length not in (None, 20):  # the pipeline honours max_length
            config.max_new_tokens = None
        model.state["generation-config"] = config
    return model.state["generation-config"]
