"""table-question-answering: TAPAS (custom ONNX export) and TAPEX (generation) against the transformers pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from localinfer import BadRequestError
from tests.conftest import assert_close, assert_informative
from tests.fixtures.tiny_models import TABLE

QUERIES = ["which city is the capital of france?", "how tall is the tower in paris?", "what is the total height?"]
OTHER_QUERIES = ["which country is london in?", "how many cities are there?", "what is the average height?"]
OTHER_TABLE = {
    "city": ["Rome", "Berlin", "Madrid", "Paris"],
    "country": ["Italy", "Germany", "Spain", "France"],
    "height": ["12", "368", "50", "324"],
}


def _tapas_oracle(pipe):
    """The pipeline's answers to (query, table) pairs, coordinates as lists (JSON)."""

    def answer(items, parameters):
        answers = []
        for query, table in items:
            expected = pipe(table=table, query=query, **parameters)
            answers.append({**expected, "coordinates": [list(c) for c in expected["coordinates"]]})
        return answers

    return answer


def _cells_of(answer: str, table: dict) -> list[list[int]]:
    """The [row, column] of the cells whose text is TAPEX's answer (or one of its comma-separated parts)."""
    parts = {answer.strip().lower(), *(part.strip().lower() for part in answer.split(","))} - {""}
    found = [
        [r, c] for c, column in enumerate(table.values()) for r, cell in enumerate(column) if cell.lower() in parts
    ]
    return sorted(found)


@pytest.fixture(scope="module")
def oracles(tiny):
    from transformers import pipeline

    return {name: pipeline("table-question-answering", model=str(tiny[name])) for name in ("tapas", "tapex")}


def test_tapas_parity_with_the_pipeline(engine, oracles):
    oracle = _tapas_oracle(oracles["tapas"])
    items = [(query, TABLE) for query in QUERIES]
    # the cells and the aggregator depend on the query and on the table
    assert_informative(oracle, items, {}, other_inputs=[(query, OTHER_TABLE) for query in QUERIES])
    expected = assert_informative(oracle, items, {}, other_inputs=[(query, TABLE) for query in OTHER_QUERIES])
    assert len({repr(e) for e in expected}) == len(QUERIES)  # each query answers otherwise
    for query, expected_for_query in zip(QUERIES, expected, strict=True):
        answer = engine.query("tiny/tapas", {"inputs": {"query": query, "table": TABLE}})
        assert_close(answer, expected_for_query)
    assert {e["aggregator"] for e in expected} >= {"NONE", "SUM"}


def test_tapas_list_of_queries_and_numbers_in_cells(engine, oracles):
    table = {"city": ["Paris", "London"], "height": [324, 96.5]}
    as_text = {"city": ["Paris", "London"], "height": ["324", "96.5"]}
    items = [(query, as_text) for query in [*QUERIES, *OTHER_QUERIES]]
    others = [(query, as_text) for query in [*OTHER_QUERIES, *QUERIES]]
    expected = assert_informative(_tapas_oracle(oracles["tapas"]), items, {}, other_inputs=others)
    answer = engine.query("tiny/tapas", {"inputs": [{"query": query, "table": table} for query, _ in items]})
    assert_close(answer, expected)


def test_tapas_torch_backend_answers_the_same(engine, torch_engine):
    for query in QUERIES:
        payload = {"inputs": {"query": query, "table": TABLE}}
        assert_close(torch_engine.query("tiny/tapas", payload), engine.query("tiny/tapas", payload))


def test_tapex_generates_what_the_pipeline_generates(engine, oracles):
    """The pipeline generates the answer only; its cells are those of the table whose text is the answer."""

    def oracle(queries, parameters):
        return [oracles["tapex"](table=TABLE, query=query, **parameters)["answer"] for query in queries]

    queries = [*QUERIES, *OTHER_QUERIES]
    expected = assert_informative(oracle, queries, {}, other_inputs=[*OTHER_QUERIES, *QUERIES])
    found = [_cells_of(text, TABLE) for text in expected]
    assert len({repr(coordinates) for coordinates in found if coordinates}) >= 3  # answers are cells of the table
    for query, text, coordinates in zip(queries, expected, found, strict=True):
        answer = engine.query("tiny/tapex", {"inputs": {"query": query, "table": TABLE}})
        cells = [list(TABLE.values())[col][row] for row, col in coordinates]
        assert answer == {"answer": text, "coordinates": coordinates, "cells": cells, "aggregator": "NONE"}


def test_tapex_torch_backend_answers_the_same(engine, torch_engine):
    for query in QUERIES:
        payload = {"inputs": {"query": query, "table": TABLE}}
        assert torch_engine.query("tiny/tapex", payload) == engine.query("tiny/tapex", payload)


@pytest.mark.parametrize(
    ("inputs", "parameters", "message"),
    [
        ({"query": "q", "table": {"a": ["1", "2"], "b": ["x"]}}, {}, "inputs.table: Value error, all columns"),
        ({"query": "q", "table": {}}, {}, "inputs.table"),
        ({"query": "q", "table": {"a": []}}, {}, "the table has no rows"),
        ({"query": "", "table": TABLE}, {}, "inputs.query"),
        ({"table": TABLE}, {}, "inputs.query: Field required"),
        ({"query": "q", "table": {"a": [True]}}, {}, "inputs.table.a.0"),
        ({"query": "q", "table": TABLE}, {"padding": "sideways"}, "parameters.padding"),
        ({"query": "q", "table": TABLE}, {"truncation": "sometimes"}, "parameters.truncation"),
        ({"query": "q", "table": TABLE}, {"aggregate": True}, "parameters.aggregate: unknown parameter"),
    ],
)
def test_bad_requests_are_400_naming_the_field(engine, inputs, parameters, message):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/tapas", {"inputs": inputs, "parameters": parameters})
    assert message in info.value.body["error"]


@pytest.mark.parametrize("seed", range(4))
def test_tapas_cell_selection_as_the_tokenizer(tiny, seed):
    """The numpy cell selection against `TapasTokenizer.convert_logits_to_predictions` (torch tensors), on logits
    drawn near the threshold (the tiny model's own are far from it): cells of several tokens ("New York", "324"),
    question tokens, padding, and logits below the tokenizer's clip at -88.7."""
    import pandas as pd
    import torch
    from transformers import AutoTokenizer

    from localinfer.tasks.table_question_answering import _selected_cells

    tokenizer = AutoTokenizer.from_pretrained(tiny["tapas"])
    table = pd.DataFrame({column: OTHER_TABLE[column] + cells for column, cells in TABLE.items()})
    encoded = tokenizer(table=table, queries=QUERIES, padding=True, return_tensors="np")
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, encoded["input_ids"].shape).astype(np.float32)
    logits[rng.random(logits.shape) < 0.1] = -100.0
    rows = zip(logits, encoded["attention_mask"], encoded["token_type_ids"], strict=True)
    found = [_selected_cells(*row) for row in rows]
    data = {name: torch.from_numpy(encoded[name]) for name in ("input_ids", "attention_mask", "token_type_ids")}
    (expected,) = tokenizer.convert_logits_to_predictions(data, torch.from_numpy(logits.copy()))
    assert found == expected
    assert all(found) and len({repr(cells) for cells in found}) == len(QUERIES)  # cells chosen, otherwise per query
