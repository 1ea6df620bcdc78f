"""table-question-answering: TAPAS (custom ONNX export) and TAPEX (generation) against the transformers pipeline."""

from __future__ import annotations

import pytest

from localinfer import BadRequestError
from tests.conftest import assert_close
from tests.fixtures.tiny_models import TABLE

QUERIES = ["which city is the capital of france?", "how tall is the tower in paris?", "what is the total height?"]


@pytest.fixture(scope="module")
def oracles(tiny):
    from transformers import pipeline

    return {name: pipeline("table-question-answering", model=str(tiny[name])) for name in ("tapas", "tapex")}


def test_tapas_parity_with_the_pipeline(engine, oracles):
    for query in QUERIES:
        expected = oracles["tapas"](table=TABLE, query=query)
        expected["coordinates"] = [list(c) for c in expected["coordinates"]]
        answer = engine.query("tiny/tapas", {"inputs": {"query": query, "table": TABLE}})
        assert_close(answer, expected)
    assert any(engine.query("tiny/tapas", {"query": q, "table": TABLE})["cells"] for q in QUERIES)


def test_tapas_list_of_queries_and_numbers_in_cells(engine, oracles):
    table = {"city": ["Paris", "London"], "height": [324, 96.5]}
    expected = [
        oracles["tapas"](table={"city": ["Paris", "London"], "height": ["324", "96.5"]}, query=q) for q in QUERIES[:2]
    ]
    for e in expected:
        e["coordinates"] = [list(c) for c in e["coordinates"]]
    answer = engine.query("tiny/tapas", {"inputs": [{"query": q, "table": table} for q in QUERIES[:2]]})
    assert_close(answer, expected)


def test_tapas_torch_backend_answers_the_same(engine, torch_engine):
    for query in QUERIES:
        payload = {"inputs": {"query": query, "table": TABLE}}
        assert_close(torch_engine.query("tiny/tapas", payload), engine.query("tiny/tapas", payload))


def test_tapex_generates_what_the_pipeline_generates(engine, oracles):
    for query in QUERIES:
        expected = oracles["tapex"](table=TABLE, query=query)
        answer = engine.query("tiny/tapex", {"inputs": {"query": query, "table": TABLE}})
        assert answer["answer"] == expected["answer"] and answer["aggregator"] == "NONE"
        for (row, col), cell in zip(answer["coordinates"], answer["cells"], strict=True):
            assert list(TABLE.values())[col][row] == cell


def test_tapex_torch_backend_answers_the_same(engine, torch_engine):
    payload = {"inputs": {"query": QUERIES[0], "table": TABLE}}
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
