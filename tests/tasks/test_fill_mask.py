"""fill-mask: parity with the transformers pipeline (one mask, several masks, targets, top_k); errors."""

from __future__ import annotations

import re

import pytest

from localinfer import BadRequestError
from tests.conftest import assert_close

CASES = {
    "bert-mlm": ["That is a [MASK] person.", "Paris is the [MASK] of France, isn't it?", "[MASK] is a [MASK] day"],
    "roberta-mlm": ["That is a<mask> person.", "Paris is the capital of<mask>.", "<mask> is a<mask> day"],
}
TARGETS = {"bert-mlm": ["happy", "sunny", "zzz-not-a-word"], "roberta-mlm": ["Ġhappy", "happy", "day"]}


@pytest.fixture(scope="module")
def oracles(tiny):
    from transformers import pipeline

    return {name: pipeline("fill-mask", model=str(tiny[name])) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("parameters", [{}, {"top_k": 1}, {"top_k": 12}, "targets", "targets+top_k"])
def test_parity_with_the_pipeline(engine, oracles, name, parameters):
    if parameters == "targets":
        parameters = {"targets": TARGETS[name]}
    elif parameters == "targets+top_k":
        parameters = {"targets": TARGETS[name][0], "top_k": 3}
    for text in CASES[name]:
        expected = oracles[name](text, **parameters)
        assert_close(engine.query(f"tiny/{name}", {"inputs": text, "parameters": parameters}), expected)
    expected = [oracles[name](text, **parameters) for text in CASES[name]]
    assert_close(engine.query(f"tiny/{name}", {"inputs": CASES[name], "parameters": parameters}), expected)


def test_default_is_five_best_first(engine):
    answer = engine.query("tiny/bert-mlm", "That is a [MASK] person.")
    assert len(answer) == 5 and set(answer[0]) == {"sequence", "score", "token", "token_str"}
    assert [a["score"] for a in answer] == sorted((a["score"] for a in answer), reverse=True)


def test_torch_backend_answers_the_same(engine, torch_engine):
    for name, texts in CASES.items():
        payload = {"inputs": texts, "parameters": {"top_k": 3}}
        assert_close(torch_engine.query(f"tiny/{name}", payload), engine.query(f"tiny/{name}", payload))


@pytest.mark.parametrize(("name", "token"), [("bert-mlm", "[MASK]"), ("roberta-mlm", "<mask>")])
def test_input_without_the_mask_token_is_400_naming_it(engine, name, token):
    with pytest.raises(BadRequestError, match=re.escape(f"no mask token {token}")):
        engine.query(f"tiny/{name}", {"inputs": ["That is a [mask] <MASK> person"]})


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"top_k": 0}, "parameters.top_k"),
        ({"top_k": "3"}, "parameters.top_k"),
        ({"targets": []}, "parameters.targets"),
        ({"targets": [1]}, "parameters.targets"),
        ({"targets": ""}, "parameters.targets"),
        ({"target": "x"}, "parameters.target: unknown parameter"),
    ],
)
def test_bad_parameters_are_400_naming_them(engine, parameters, field):
    with pytest.raises(BadRequestError) as info:
        engine.query("tiny/bert-mlm", {"inputs": "a [MASK]", "parameters": parameters})
    assert field in info.value.body["error"]
